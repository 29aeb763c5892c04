"""The pipeline's column-wise encoding gives exactly what cassandra-driver's own bind() gives,
for the table's INSERT as the test stack's Cassandra prepares it: on the core's rows, on
arbitrary values of the column types, and (value or error) on values of unexpected types."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from cassandra import util
from cassandra.query import UNSET_VALUE, PreparedStatement
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.samples import sample_events
from programuser_dagster.cassandra.cql_encoding import bound, encode_columns
from programuser_dagster.cassandra.writes import group_statement, row_writes
from programuser_dagster.core.clock import WriteClock
from programuser_dagster.core.events import COLUMNS, NOT_WRITTEN, flatten
from programuser_dagster.resources import cassandra_io_manager
from programuser_dagster.settings import Settings


@pytest.fixture(scope="module")
def insert(stack: Settings, cassandra_session: Any) -> Iterator[PreparedStatement]:
    yield cassandra_session.prepare(cassandra_io_manager(stack).writer().insert_cql())


def _driver(insert: PreparedStatement, columns: list[list[Any]]) -> list[tuple[Any, ...]]:
    rows = zip(*columns, strict=True)
    return [
        tuple(insert.bind([UNSET_VALUE if v is NOT_WRITTEN else v for v in row]).values)
        for row in rows
    ]


def _assert_same_outcome(insert: PreparedStatement, columns: list[list[Any]]) -> None:
    """The same encoded values as the driver's bind(), or an error of the same type."""
    try:
        expected = _driver(insert, columns)
    except Exception as exc:
        with pytest.raises(type(exc)):
            encode_columns(columns, insert)
        return
    assert encode_columns(columns, insert) == expected


def _stamped(values: list[bytes]) -> Any:
    rows = flatten(enumerate(values)).rows
    rows["write_times"] = WriteClock(0, 1_700_000_000_000_000).stamp(rows["writers"].tolist())
    return rows


def test_core_rows_encode_as_the_driver_binds_them(insert: PreparedStatement) -> None:
    # Repeated keys, so that some rows are written by several events (several writes a row).
    events = list(sample_events(300, seed=5))
    again = [{"programId": e["programId"], "userId": e["userId"], "programName": "again"}
             for e in events[:40]]
    values = [orjson.dumps(e) for e in events + again]
    columns, extra = row_writes(_stamped(values))
    assert extra, "some rows have further writes"
    assert encode_columns(columns, insert) == _driver(insert, columns)
    assert len(columns[0]) == 300 + sum(len(v) for v in extra.values())


text = st.text(max_size=40) | st.sampled_from(["", "é€𝄞", "x" * 70_000])
absent = st.sampled_from([None, NOT_WRITTEN])
dates = st.dates(min_value=datetime.date(1, 1, 1), max_value=datetime.date(9999, 12, 31))
text_maps = st.dictionaries(text, text, max_size=8)
by_type = {"text": text, "boolean": st.booleans(), "date": dates, "map": text_maps}
kinds = {
    "pii_consent_required": "boolean",
    "user_locations": "map",
    "created_at": "date",
    "updated_at": "date",
}
write_time = st.integers(min_value=-(2**63), max_value=2**63 - 1)
row = st.tuples(*(absent | by_type[kinds.get(name, "text")] for name in COLUMNS), write_time)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.lists(row, min_size=1, max_size=5))
def test_any_values_of_the_column_types_encode_as_the_driver_binds_them(
    insert: PreparedStatement, rows: list[tuple[Any, ...]]
) -> None:
    _assert_same_outcome(insert, [list(c) for c in zip(*rows, strict=True)])


# Values of other types than the core makes: the driver's own serialize() decides for them.
odd_values = st.one_of(
    st.integers(min_value=0, max_value=2**32 - 1),
    st.integers(min_value=2**40, max_value=2**41),
    st.binary(max_size=4),
    st.just(util.Date(18000)),
    st.just(datetime.datetime(2024, 2, 29, 23, 59)),
    st.just("\ud800"),  # a lone surrogate: not UTF-8
    st.dictionaries(st.just("k"), st.integers(0, 3) | st.none(), min_size=1, max_size=1),
    st.dictionaries(st.integers(0, 3), st.just("v"), min_size=1, max_size=1),
    st.lists(st.just("a"), max_size=2),
    st.just(1.5),
)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(column=st.sampled_from((*COLUMNS, "[timestamp]")), value=odd_values)
def test_odd_values_encode_or_fail_as_with_the_driver(
    insert: PreparedStatement, column: str, value: Any
) -> None:
    columns: list[list[Any]] = [["p1"], ["u1"]] + [[NOT_WRITTEN] for _ in COLUMNS[2:]] + [[7]]
    columns[[c.name for c in insert.column_metadata].index(column)] = [value]
    _assert_same_outcome(insert, columns)


def test_statements_route_and_carry_what_the_driver_binds(
    insert: PreparedStatement, stack: Settings
) -> None:
    columns, extra = row_writes(_stamped([orjson.dumps(e) for e in sample_events(3, seed=9)]))
    params = [[UNSET_VALUE if v is NOT_WRITTEN else v for v in row]
              for row in zip(*columns, strict=True)]
    encoded = encode_columns(columns, insert)
    single, by_driver = bound(insert, encoded[0]), insert.bind(params[0])
    assert single.routing_key == by_driver.routing_key
    assert single.keyspace == by_driver.keyspace == stack.cassandra_keyspace
    batch = group_statement(insert, encoded, [0, 1, 2], extra)
    assert [p for _, _, p in batch._statements_and_parameters] == [
        tuple(insert.bind(p).values) for p in params
    ]
    assert batch.routing_key == single.routing_key


def test_the_write_time_variable_is_the_statements_last(insert: PreparedStatement) -> None:
    assert [c.name for c in insert.column_metadata] == [*COLUMNS, "[timestamp]"]


def test_every_write_the_io_manager_sends_is_marked_idempotent(kafka_topics: Settings) -> None:
    """What lets the driver retry a write on another node and speculate
    (programuser_dagster/cassandra/policies.py): each carries its own write time."""
    io = cassandra_io_manager(kafka_topics).writer()
    try:
        insert = io.insert_statement()
        columns, extra = row_writes(_stamped([orjson.dumps(e) for e in sample_events(3, seed=9)]))
        encoded = encode_columns(columns, insert)
        assert insert.is_idempotent
        assert bound(insert, encoded[0]).is_idempotent
        assert group_statement(insert, encoded, [0, 1, 2], extra).is_idempotent
    finally:
        io.client.close()
