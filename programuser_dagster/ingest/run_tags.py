"""The tags of a run of program_user_info: what range it reads, how it ended, who launched it.

The sensor, the schedule and drain set them when they launch a run, the run corrects them to the
range it really reads, and the planner reads them back (backlog.py) to count failed attempts.
"""

# Dagster's own tag for a run's partition key (one Kafka partition: "0", "1", ...).
PARTITION_TAG = "dagster/partition"
START_TAG = "programuser/start_offset"
END_TAG = "programuser/end_offset"
# The fence token of the committed state the run started from: with START_TAG, which attempts
# at one committed state a run is (backlog.py counts the failed ones for its back-off).
START_TOKEN_TAG = "programuser/start_token"
# How a run that succeeded ended: "committed"; "superseded" when another run of the partition
# committed first and this run's commit was refused (it committed nothing); "no_progress" when its
# range was empty though the partition has records (a bug or a bad setting: the sensor counts it as
# a failed attempt, drain stops on the partition); "held" when its partition, added to the topic,
# waits for the old partitions' backlog (core/growth.py: it read and committed nothing).
OUTCOME_TAG = "programuser/outcome"
COMMITTED = "committed"
SUPERSEDED = "superseded"
HELD = "held"
NO_PROGRESS = "no_progress"
# Who launched a run ("drain"; unset for the daemon's and the UI's runs).
LAUNCHED_BY_TAG = "programuser/launched_by"
DRAIN = "drain"
# On runs executed by `drain`: the process that executes them (backlog.runs_in_flight).
DRAIN_PROCESS_TAG = "programuser/drain_process"
