"""The incident tools as Dagster jobs, launchable from the Launchpad with typed config: the same
code as the CLI's `replay` (and `redrive`), with a dry run unless `apply` is set. What they did
is recorded on the asset (an observation per partition), as the CLI records it."""

from collections.abc import Callable, Iterator

from dagster import (
    AssetObservation,
    Config,
    Failure,
    OpExecutionContext,
    ResourceParam,
    in_process_executor,
    job,
    op,
)
from pydantic import Field

from ..cassandra.client import CassandraResource, CassandraWriteFailed
from ..cassandra.io_manager import CassandraIOManager
from ..cassandra.kept_commits import keep_commit, kept_commits
from ..kafka.resource import KafkaResource, KafkaUnavailable
from ..names import PROGRAM_ENROLLMENT
from . import redrive, replay
from .outcomes import CouldNotComplete

REPLAY_JOB = "replay"
REDRIVE_JOB = "redrive"


class ReplayConfig(Config):
    partitions: list[int] = Field(
        default_factory=list, description="Kafka partitions to rewind; empty: all of them.")
    to_offset: int | None = Field(default=None, description="Rewind to this offset.")
    to_time: str | None = Field(
        default=None, description="Rewind to the first record at or after this ISO-8601 time, "
        "with its offset or Z (e.g. 2026-11-30T14:00:00Z).")
    to_earliest: bool = Field(default=False, description="Rewind to the oldest retained record.")
    apply: bool = Field(default=False, description="Rewind; unset: a dry run that only says "
                        "what it would do.")


def replay_observation(rewind: replay.Rewind, by: str) -> AssetObservation:
    """What a replay did to one partition, on the asset's page."""
    return AssetObservation(
        PROGRAM_ENROLLMENT,
        description=f"Replay by {by}: {rewind.line(applied=True)}",
        metadata={"replay_partition": rewind.partition, "replay_from": rewind.start,
                  "replay_to": rewind.target, "records_again": rewind.records_again,
                  "replay_by": by},
    )


def run_replay(
    kafka: KafkaResource, cassandra: CassandraResource, partitions: list[int],
    target: replay.Target, do_apply: bool, say: Callable[[str], None],
    record: Callable[[replay.Rewind], None],
) -> list[replay.Rewind]:
    """Plan, apply if asked, say each partition's line: the CLI's and the job's replay.
    `record` is given each rewind as soon as it is applied. The partitions' kept commits
    (`cassandra`) are read first, and each rewind's commit is kept there."""
    kept = kept_commits(cassandra, kafka.group_id, kafka.input_topic)
    rewinds = replay.plan(kafka, partitions, target, kept)
    if not do_apply:
        for rewind in rewinds:
            say(rewind.line(applied=False))
        say("dry run: nothing was changed; add --apply (the job: apply) to rewind.")
        return []

    def applied(rewind: replay.Rewind) -> None:
        say(rewind.line(applied=True))
        record(rewind)

    done = replay.apply(kafka, rewinds, applied, lambda committed: keep_commit(
        cassandra, kafka.group_id, kafka.input_topic, committed, say))
    for rewind in rewinds:
        if not rewind.due:
            say(rewind.line(applied=True))
    return done


@op(out={})
def replay_partitions(
    context: OpExecutionContext, config: ReplayConfig, kafka: KafkaResource,
    cassandra: CassandraResource,
) -> Iterator[AssetObservation]:
    """Rewind the consumer group of the chosen partitions; the sensor re-ingests from there."""
    by = f"launched from the UI (run {context.run_id})"
    done: list[replay.Rewind] = []
    failure: Exception | None = None
    try:
        target = replay.Target(
            offset=config.to_offset,
            time_ms=None if config.to_time is None else replay.parse_time(config.to_time),
            earliest=config.to_earliest,
        )
        run_replay(kafka, cassandra, config.partitions, target, config.apply, context.log.info,
                   done.append)
    except (ValueError, CouldNotComplete, KafkaUnavailable, CassandraWriteFailed) as exc:
        failure = exc
    # Every rewind applied is recorded, also when a later partition's failed.
    for rewind in done:
        yield replay_observation(rewind, by)
    if failure is not None:
        raise Failure(description=str(failure)) from failure


@job(name=REPLAY_JOB, executor_def=in_process_executor,
     description="Rewind partitions' committed offsets (dry run unless `apply`), so that the "
     "sensor re-ingests from there; every rewritten cell is written after all earlier ones.")
def replay_job() -> None:
    replay_partitions()


class RedriveConfig(Config):
    reasons: list[str] = Field(default_factory=list, description="Only letters of these "
                               "reasons (a too_large letter's original reason counts); empty: all.")
    partitions: list[int] = Field(default_factory=list,
                                  description="Only letters of these source partitions.")
    since: str | None = Field(default=None, description="Only letters whose source_timestamp "
                              "is at or after this ISO-8601 time (with its offset or Z).")
    until: str | None = Field(default=None, description="... and before this one.")
    apply: bool = Field(default=False, description="Write; unset: a dry run that only counts.")


def redrive_filters(reasons: list[str], partitions: list[int], since: str | None,
                    until: str | None) -> redrive.Filters:
    return redrive.Filters(
        reasons=frozenset(reasons), partitions=frozenset(partitions),
        since_ms=None if since is None else replay.parse_time(since, "--since"),
        until_ms=None if until is None else replay.parse_time(until, "--until"),
    )


def redrive_observation(counts: list[redrive.Counts], by: str) -> AssetObservation:
    """What a re-drive wrote, on the asset's page: totals, and per source partition."""
    totals: dict[str, int] = {}
    for c in counts:
        for name, n in c.metadata().items():
            totals[name] = totals.get(name, 0) + n
    still: dict[str, int] = {}
    for c in counts:
        for reason, n in c.still_failing.items():
            still[reason] = still.get(reason, 0) + n
    return AssetObservation(
        PROGRAM_ENROLLMENT,
        description=f"Re-drive by {by}: " + "; ".join(c.line(applied=True) for c in counts),
        metadata={**totals, "still_failing_by_reason": still, "redrive_by": by,
                  "source_partitions": [c.partition for c in counts]},
    )


@op(out={})
def redrive_letters(
    context: OpExecutionContext, config: RedriveConfig, kafka: KafkaResource,
    # The IO manager's write engine: it writes the letters' rows as it writes a run's.
    cassandra_io_manager: ResourceParam[CassandraIOManager],
) -> Iterator[AssetObservation]:
    """Write the dead letters today's rules accept, at their events' write times."""
    writer = cassandra_io_manager.writer()
    try:
        filters = redrive_filters(config.reasons, config.partitions, config.since, config.until)
        counts = redrive.redrive(kafka, writer, filters, config.apply, context.log.info)
    except (ValueError, KafkaUnavailable, CassandraWriteFailed) as exc:
        raise Failure(description=str(exc)) from exc
    finally:
        writer.client.close()
    if config.apply and counts:
        yield redrive_observation(counts, f"launched from the UI (run {context.run_id})")


@job(name=REDRIVE_JOB, executor_def=in_process_executor,
     description="Re-drive dead letters that today's rules accept (dry run unless `apply`), "
     "each at its event's write time, so that no later event's values are overwritten.")
def redrive_job() -> None:
    redrive_letters()
