"""The Dagster names that the ingestion side and the incident tools share: the asset the table is,
and the job that writes it (kept below both, so neither imports the other for a name)."""

from dagster import AssetKey

PROGRAM_ENROLLMENT = AssetKey("program_enrollment")
JOB_NAME = "program_user_info"
# The job's dynamic partitions: one per Kafka partition of the input topic.
PARTITIONS_NAME = "kafka_partitions"
