"""Helpers for tests that drive the real job against the real Kafka and Cassandra."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from cassandra.cluster import Session
from confluent_kafka import Consumer, Producer, TopicPartition
from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    ExecuteInProcessResult,
    SensorResult,
    build_sensor_context,
)
from dagster._core.utils import make_new_run_id

from programuser_dagster.ingest.job import JOB_NAME, kafka_partitions, program_user_info
from programuser_dagster.ingest.run_tags import PARTITION_TAG, START_TAG, START_TOKEN_TAG
from programuser_dagster.ingest.sensors import build_backlog_sensor, build_health_sensor
from programuser_dagster.kafka.resource import PartitionOffsets
from programuser_dagster.resources import build_resources, cassandra_resource, kafka_resource
from programuser_dagster.settings import Settings, temporary_env  # noqa: F401 (for the tests)
from tests.support.seed import SEED_EVENT as SEED_EVENT


def event(program: str, user: str, **fields: Any) -> dict[str, Any]:
    return {"programId": program, "userId": user, **fields}


def produce(
    settings: Settings,
    values: Iterable[bytes | dict[str, Any] | None],
    partition: int = 0,
    key: bytes | None = b"k",
    headers: Sequence[tuple[str, bytes]] | None = None,
    timestamp: int | None = None,
) -> list[int]:
    """Produce values to one partition of the input topic; returns their offsets."""
    producer = Producer(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "message.max.bytes": 5 << 20}
    )
    offsets: list[int] = []

    def report(err: Any, msg: Any) -> None:
        assert err is None, err
        offsets.append(msg.offset())

    for v in values:
        raw = orjson.dumps(v) if isinstance(v, dict) else v
        extra: dict[str, Any] = {}
        if timestamp is not None:
            extra["timestamp"] = timestamp
        producer.produce(
            settings.kafka_input_topic,
            value=raw,
            key=key,
            partition=partition,
            headers=list(headers) if headers else None,
            on_delivery=report,
            **extra,
        )
        producer.flush(30)  # one at a time keeps offsets in the order given
    return offsets


def run_partition(
    instance: DagsterInstance,
    settings: Settings,
    partition: int = 0,
    end_offset: int | None = None,
    resources: dict[str, Any] | None = None,
    chunk_messages: int | None = None,
    clock_skew_max_s: float | None = None,
) -> ExecuteInProcessResult:
    """Execute the real job for one partition, as the sensor's run would."""
    instance.add_dynamic_partitions(
        kafka_partitions.name or "", [str(p) for p in range(settings.kafka_partitions)]
    )
    config: dict[str, Any] = {}
    if end_offset is not None:
        config["end_offset"] = end_offset
    if chunk_messages is not None:
        config["chunk_messages"] = chunk_messages
    if clock_skew_max_s is not None:
        config["clock_skew_max_s"] = clock_skew_max_s
    return program_user_info.execute_in_process(
        run_config={"ops": {"flatten_events": {"config": config}}},
        instance=instance,
        partition_key=str(partition),
        resources=resources or build_resources(settings),
        raise_on_error=False,
    )


def add_run(
    instance: DagsterInstance,
    partition: int,
    status: DagsterRunStatus,
    start: int = 0,
    token: int = 0,
    **tags: str,
):
    """A run record of the job at a committed state (offset, fence token), as the sensor tags
    the runs it requests."""
    run = DagsterRun(
        job_name=JOB_NAME,
        run_id=make_new_run_id(),
        status=status,
        tags={PARTITION_TAG: str(partition), START_TAG: str(start),
              START_TOKEN_TAG: str(token), **tags},
    )
    return instance.add_run(run)


def offsets(settings: Settings, partition: int = 0) -> PartitionOffsets:
    kafka = kafka_resource(settings)
    try:
        return kafka.partition_offsets(partition)
    finally:
        kafka.close()


def _as_dict(found: Any) -> dict[str, Any]:
    out = dict(found._asdict())
    for col in ("created_at", "updated_at"):
        if out[col] is not None:  # cassandra.util.Date -> datetime.date
            out[col] = dt.date.fromisoformat(str(out[col]))
    if out["user_locations"] is not None:
        out["user_locations"] = dict(out["user_locations"])
    return out


def row(session: Session, settings: Settings, program: str, user: str) -> dict[str, Any] | None:
    found = session.execute(
        f"SELECT * FROM {settings.cassandra_keyspace}.{settings.cassandra_table} "
        "WHERE program_id=%s AND user_id=%s",
        (program, user),
    ).one()
    return None if found is None else _as_dict(found)


def all_rows(session: Session, settings: Settings) -> dict[tuple[str, str], dict[str, Any]]:
    """The whole table, keyed by (program_id, user_id), in one paged scan."""
    rows = session.execute(
        f"SELECT * FROM {settings.cassandra_keyspace}.{settings.cassandra_table}", timeout=120
    )
    return {(r.program_id, r.user_id): _as_dict(r) for r in rows}


def expected_rows(values: Sequence[bytes | None]) -> dict[tuple[str, str], dict[str, Any]]:
    """The table a clean run makes of these messages, in this order (as all_rows gives it):
    what the pure core flattens them to."""
    from programuser_dagster.core.events import COLUMNS, NOT_WRITTEN, flatten

    batch = flatten(enumerate(values))
    return {
        (r["program_id"], r["user_id"]): {
            c: (None if r[c] is NOT_WRITTEN or r[c] == {} else r[c]) for c in COLUMNS
        }
        for r in batch.rows.to_dict("records")
    }


def dead_letters(
    settings: Settings, expected: int, timeout_s: float = 20.0, committed_only: bool = True
) -> list[Any]:
    """Every message of the dead-letter topic (all partitions), waiting for `expected`.

    As the contract says to read it, read_committed: letters of a run whose commit did not land
    are not seen. committed_only=False also shows those of transactions still open.
    """
    import time

    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"{settings.kafka_group_id}-dlq-reader",
            "enable.auto.commit": False,
            "isolation.level": "read_committed" if committed_only else "read_uncommitted",
        }
    )
    try:
        md = consumer.list_topics(settings.kafka_dlq_topic, timeout=10)
        parts = md.topics[settings.kafka_dlq_topic].partitions
        consumer.assign([TopicPartition(settings.kafka_dlq_topic, p, 0) for p in parts])
        got: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for m in consumer.consume(100, timeout=0.5):
                if m.error() is None:
                    got.append(m)
            if len(got) >= expected:
                # Linger briefly so that an unexpected extra letter is seen too.
                got += [m for m in consumer.consume(100, timeout=1.0) if m.error() is None]
                break
        return got
    finally:
        consumer.close()


def written_metadata(events: Iterable[Any]) -> list[dict[str, Any]]:
    """The counts the Cassandra IO manager recorded for flatten_events' `rows` (what the range
    read and wrote), one per execution of the step among `events` (Dagster events)."""
    found = []
    for ev in events:
        if (ev is not None and ev.event_type_value == "HANDLED_OUTPUT"
                and ev.step_key == "flatten_events"
                and ev.event_specific_data.output_name == "rows"):
            found.append({k: v.value for k, v in ev.event_specific_data.metadata.items()})
    return found


def step_metadata(result: ExecuteInProcessResult) -> dict[str, Any]:
    """A run's counts, as values: what the IO manager recorded for flatten_events' `rows`,
    completed by the commit step's materialization when the run committed (the dead letters
    are counted there)."""
    [found] = written_metadata(result.all_events) or [None]
    if found is None:
        raise AssertionError("no record of the rows written")
    for ev in result.all_events:
        if ev.event_type_value == "ASSET_MATERIALIZATION":
            mat = ev.event_specific_data.materialization
            found.update({k: v.value for k, v in mat.metadata.items()})
    return found


def create_schema(session: Session, settings: Settings) -> None:
    from programuser_dagster.cassandra.schema import schema_statements

    for stmt in schema_statements(
        settings.cassandra_keyspace, settings.cassandra_table, settings.cassandra_replication
    ):
        session.execute(stmt)


def failure_text(result: Any) -> str:
    """What a failed run's step failures say, causes included (as the UI shows them)."""
    texts = []
    for ev in result.all_events:
        if ev.is_step_failure:
            error = ev.event_specific_data.error
            texts.append(error.to_string() if error is not None else ev.message)
    return "\n".join(texts)


def cli_env(s: Settings, home: Any = None, **extra: str) -> dict[str, str]:
    """The environment of a subprocess (the CLI, a daemon) on the test's topics and keyspace,
    and on Dagster home `home` (None: no DAGSTER_HOME at all). The test fault hooks of this
    process are not passed on unless given in `extra`."""
    from programuser_dagster.ingest.fault_pauses import (
        PAUSE_BEFORE_COMMIT_ENV,
        PAUSE_BEFORE_FENCE_ENV,
        PAUSE_BEFORE_WRITE_ENV,
    )

    hooks = (PAUSE_BEFORE_COMMIT_ENV, PAUSE_BEFORE_FENCE_ENV, PAUSE_BEFORE_WRITE_ENV,
             "DAGSTER_HOME")
    env = {k: v for k, v in os.environ.items() if k not in hooks}
    if home is not None:
        env["DAGSTER_HOME"] = str(home)
    env.update({
        "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
        "KAFKA_INPUT_TOPIC": s.kafka_input_topic,
        "KAFKA_GROUP_ID": s.kafka_group_id,
        "KAFKA_DLQ_TOPIC": s.kafka_dlq_topic,
        "CASSANDRA_PORT": str(s.cassandra_port),
        "CASSANDRA_KEYSPACE": s.cassandra_keyspace,
        **extra,
    })
    return env


def tick(instance: DagsterInstance, s: Settings, cursor: str | None = None) -> SensorResult:
    """One evaluation of the real backlog sensor for these settings, from `cursor` (the one it
    leaves, if it sets one: the result's)."""
    sensor = build_backlog_sensor(program_user_info, s)
    kafka, cassandra = kafka_resource(s), cassandra_resource(s)
    try:
        with build_sensor_context(instance=instance, cursor=cursor,
                                  resources={"kafka": kafka, "cassandra": cassandra}) as ctx:
            result = sensor(ctx)
    finally:
        kafka.close()
        cassandra.close()
    assert isinstance(result, SensorResult)
    return result


def health_tick(
    instance: DagsterInstance, s: Settings, cursor: str | None = None
) -> tuple[SensorResult, str | None]:
    """One evaluation of the real health sensor for these settings, with the resources Dagster
    would inject: its result and the cursor it leaves."""
    kafka, cassandra = kafka_resource(s), cassandra_resource(s)
    try:
        with build_sensor_context(instance=instance, cursor=cursor,
                                  resources={"kafka": kafka, "cassandra": cassandra}) as ctx:
            result = build_health_sensor(s)(ctx)
            assert isinstance(result, SensorResult)
            return result, result.cursor if result.cursor is not None else cursor
    finally:
        kafka.close()
        cassandra.close()


def commit_outside(s: Settings, partition: int, offset: int) -> None:
    """Commit an offset for the test's group from outside the pipeline, as an operator's tool
    (or a plain consumer) would: no token, no clock in its metadata."""
    consumer = Consumer({"bootstrap.servers": s.kafka_bootstrap_servers,
                         "group.id": s.kafka_group_id, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(s.kafka_input_topic, partition, offset)],
                        asynchronous=False)
    finally:
        consumer.close()
