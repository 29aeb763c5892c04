"""What Cassandra must hold for a topic's retained records, kept on disk, and how far it does.

The pure part of `verify` (verify.py reads Kafka and Cassandra): no client library here.

Records are fed one by one with `ExpectedCells.add`; each is flattened by the core's own rules
(events._message_row): a skipped or dead-lettered record writes nothing, a written one writes
the key, the always-written columns and each group it does not leave alone
(events.COLUMN_GROUPS). Per (key, group) the store keeps the last writer of the group:

  * within one partition, the higher offset wins (the table ends as if a partition's events
    were applied in offset order: docs/contract.md);
  * across partitions (a key lives in one while producers key by programId:userId and the
    partition count stays; partitions added to the topic move keys), the later record timestamp
    wins, ties by (partition, offset). Cassandra itself orders such writes by the partitions' write
    clocks (core/clock.py), i.e. by when each partition was drained, so this is an estimate: such
    keys are counted (`keys_in_several_partitions`) so that a difference on one can be read as a
    producer's keying fault rather than a loss.

Only the writer's (partition, offset, timestamp) and an 8-byte digest of each column's value are
stored, never a value: the values are personal data; the keys are kept (they are what Cassandra
is asked for). The store is an sqlite file in a temporary directory, written without journal or
fsync and with a bounded page cache, so memory stays bounded whatever the topic's size.

Values are compared in a canonical form that makes what the core writes equal what Cassandra
returns: an empty map is null (Cassandra stores an empty map as null), a map compares by its
items, a date by its calendar day (cassandra.util.Date, by duck typing, or datetime.date).

A report never holds a key or a value: counts, column names and (partition, offset) of events.
"""

from __future__ import annotations

import shutil
import sqlite3
import struct
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from hashlib import blake2b
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from ..core.events import COLUMN_GROUPS, COLUMNS, NOT_WRITTEN, _message_row, _Rejected

Key = tuple[str, str]  # (program_id, user_id)
Place = tuple[int, int]  # (partition, offset) of an event
Writer = tuple[int, int, int]  # (partition, offset, record timestamp in ms; -1 if none)

SAMPLE = 10  # (partition, offset) examples kept per column and for missing rows

# The checked columns (all but the key) and, for each, its group's index in COLUMN_GROUPS.
CHECKED: tuple[str, ...] = COLUMNS[2:]
_GROUP_OF: tuple[int, ...] = tuple(
    next(g for g, cols in enumerate(COLUMN_GROUPS) if c in cols) for c in CHECKED
)
# Per group, the row indices (in COLUMNS) of its columns and their digest slots (in CHECKED).
_GROUP_CELLS: tuple[tuple[tuple[int, int], ...], ...] = tuple(
    tuple((COLUMNS.index(c), CHECKED.index(c)) for c in cols) for cols in COLUMN_GROUPS
)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


# --- canonical values --------------------------------------------------------------------


def canonical(value: Any) -> bytes:
    """One encoding for the core's values and Cassandra's: empty map == null, a map by its
    items, a date by its day. The column types are fixed, so tags only keep types apart."""
    kind = type(value)
    encode = _ENCODERS.get(kind)
    if encode is None:
        encode = _ENCODERS[kind] = _encoder(kind)
    return encode(value)


def _map(value: Mapping[str, str]) -> bytes:
    return b"m" + orjson.dumps(dict(value), option=orjson.OPT_SORT_KEYS) if value else b"n"


def _encoder(kind: type) -> Callable[[Any], bytes]:
    """The encoder of a type not seen yet; the few types there are are then remembered."""
    if issubclass(kind, Mapping):  # the driver's OrderedMapSerializedKey
        return _map
    if issubclass(kind, date):  # a datetime too: toordinal() is its calendar day's
        return lambda value: b"d%d" % value.toordinal()
    if hasattr(kind, "days_from_epoch"):  # cassandra.util.Date, without importing it
        return lambda value: b"d%d" % (_EPOCH_ORDINAL + value.days_from_epoch)
    raise TypeError(f"no canonical form for a {kind.__name__}")  # the type only: no value


_ENCODERS: dict[type, Callable[[Any], bytes]] = {
    type(None): lambda _: b"n",
    str: lambda value: b"s" + value.encode("utf-8", "surrogatepass"),
    bool: lambda value: b"t" if value else b"f",
    dict: _map,
}


def digest(value: Any) -> bytes:
    if value is None:  # the commonest cells, hashed once
        return _NULL
    if value is True or value is False:
        return _TRUE if value else _FALSE
    return blake2b(canonical(value), digest_size=8).digest()


_NULL, _TRUE, _FALSE = (blake2b(canonical(v), digest_size=8).digest() for v in (None, True, False))


def _wins(new: Writer, old: Writer) -> bool:
    """Whether `new` is a later writer of a (key, group) than `old` (module docstring)."""
    if new[0] == old[0]:
        return new[1] > old[1]
    return (new[2], new[0], new[1]) > (old[2], old[0], old[1])


# --- reports -----------------------------------------------------------------------------


def _merge_sample(a: list[Place], b: list[Place]) -> list[Place]:
    """The SAMPLE smallest places of both: the same whatever order batches are compared in."""
    return sorted(set(a) | set(b))[:SAMPLE]


@dataclass
class PartitionCounts:
    keys: int = 0  # keys whose latest event is in this partition
    rows_missing: int = 0
    cells_differing: int = 0  # counted at the partition of the group's writer


@dataclass
class Differences:
    """The outcome of comparing some keys; `+=` adds another's. Counts and places only."""

    keys_checked: int = 0
    rows_missing: int = 0
    missing_sample: list[Place] = field(default_factory=list)
    cells_differing: Counter[str] = field(default_factory=Counter)  # by column
    cell_samples: dict[str, list[Place]] = field(default_factory=dict)  # by column
    # Cells a record not committed yet writes again (a run may be writing it): not checkable.
    cells_unverified: int = 0
    unverified_sample: list[Place] = field(default_factory=list)  # those records' places
    partitions: dict[int, PartitionCounts] = field(default_factory=dict)
    differing_keys: int = 0

    def _partition(self, partition: int) -> PartitionCounts:
        return self.partitions.setdefault(partition, PartitionCounts())

    def __iadd__(self, other: Differences) -> Differences:
        self.keys_checked += other.keys_checked
        self.rows_missing += other.rows_missing
        self.missing_sample = _merge_sample(self.missing_sample, other.missing_sample)
        self.cells_differing.update(other.cells_differing)
        for column, places in other.cell_samples.items():
            self.cell_samples[column] = _merge_sample(self.cell_samples.get(column, []), places)
        self.cells_unverified += other.cells_unverified
        self.unverified_sample = _merge_sample(self.unverified_sample, other.unverified_sample)
        self.differing_keys += other.differing_keys
        for p, counts in other.partitions.items():
            mine = self._partition(p)
            mine.keys += counts.keys
            mine.rows_missing += counts.rows_missing
            mine.cells_differing += counts.cells_differing
        return self

    def rechecked(self, again: Differences) -> Differences:
        """The keys this pass checked, with only the differences `again` (the re-check of
        this pass's differing keys) still found."""
        out = Differences(
            keys_checked=self.keys_checked,
            rows_missing=again.rows_missing,
            missing_sample=list(again.missing_sample),
            cells_differing=Counter(again.cells_differing),
            cell_samples={c: list(s) for c, s in again.cell_samples.items()},
            cells_unverified=again.cells_unverified,
            unverified_sample=list(again.unverified_sample),
            differing_keys=again.differing_keys,
        )
        for p, counts in self.partitions.items():
            found = again.partitions.get(p, PartitionCounts())
            out.partitions[p] = PartitionCounts(counts.keys, found.rows_missing,
                                                found.cells_differing)
        return out


@dataclass
class PartitionReport:
    partition: int
    low: int
    committed: int | None  # None: the group never committed on this partition
    records: int = 0  # retained records read below the committed offset
    keys: int = 0
    rows_missing: int = 0
    cells_differing: int = 0
    beyond_end: str = ""  # the committed offset is beyond the log end: what to do (core/offsets.py)

    def describe(self) -> str:
        if self.beyond_end:
            return (f"partition {self.partition}: {self.beyond_end}; {self.records} records "
                    f"(from {self.low}), {self.keys} keys checked, {self.rows_missing} rows "
                    f"missing, {self.cells_differing} cells differ")
        if self.committed is None:
            return f"partition {self.partition}: never committed, nothing to check"
        if self.committed <= self.low:
            return (f"partition {self.partition}: no retained record below committed "
                    f"{self.committed} (low watermark {self.low}), nothing to check")
        return (f"partition {self.partition}: {self.records} records below committed "
                f"{self.committed} (from {self.low}), {self.keys} keys checked, "
                f"{self.rows_missing} rows missing, {self.cells_differing} cells differ")


@dataclass
class VerifyReport:
    """Is every retained record below the committed offsets reflected in Cassandra?

    An event Cassandra refused (dead-lettered as rejected_by_cassandra) shows here as a
    difference: its place leads to its dead letter.
    """

    partitions: list[PartitionReport]
    records_read: int
    records_not_written: dict[str, int]  # skipped / dead_lettered -> count: write nothing
    keys_checked: int
    rows_missing: int
    missing_sample: list[Place]
    cells_differing: dict[str, int]
    cell_samples: dict[str, list[Place]]
    cells_unverified: int  # differing cells a record not committed yet writes again
    unverified_sample: list[Place]  # the places of those records
    keys_in_several_partitions: int
    read_s: float = 0.0  # reading Kafka and filling the store
    compare_s: float = 0.0  # reading Cassandra and comparing, re-check included

    @property
    def ok(self) -> bool:
        """Everything checked matches, and nothing was left unchecked: a cell that could not
        be checked may be the very difference the operator is looking for, and a committed
        offset beyond the log end skips what arrives below it."""
        return (self.rows_missing == 0 and not any(self.cells_differing.values())
                and self.cells_unverified == 0
                and not any(p.beyond_end for p in self.partitions))

    def describe(self) -> str:
        lines = [p.describe() for p in self.partitions]
        cells = sum(self.cells_differing.values())
        lines.append(f"total: {self.records_read} records, {self.keys_checked} keys checked, "
                     f"{self.rows_missing} rows missing, {cells} cells differ")
        if self.records_not_written:
            lines.append("records that write no row: " + ", ".join(
                f"{n} {what}" for what, n in sorted(self.records_not_written.items())))
        if self.rows_missing:
            lines.append(f"missing rows, last written by (partition, offset): "
                         f"{_places(self.missing_sample)}")
        for column, n in sorted(self.cells_differing.items()):
            if n:
                lines.append(f"{column}: {n} cells differ, written by (partition, offset): "
                             f"{_places(self.cell_samples.get(column, []))}")
        if self.cells_unverified:
            lines.append(unverified_line(self.cells_unverified, self.unverified_sample))
        if self.keys_in_several_partitions:
            lines.append(f"{self.keys_in_several_partitions} keys have events in several "
                         "partitions: expected for keys moved by partitions added to the topic "
                         "(docs/contract.md: Partitions added to the input topic); otherwise "
                         "producers do not key by programId:userId")
        read = self.records_read / self.read_s if self.read_s else 0.0
        rows = self.keys_checked / self.compare_s if self.compare_s else 0.0
        lines.append(f"cost: read {self.read_s:.1f}s ({read:,.0f} records/s), "
                     f"compare {self.compare_s:.1f}s ({rows:,.0f} rows/s)")
        return "\n".join(lines)


def _places(places: list[Place]) -> str:
    return " ".join(f"{p}/{o}" for p, o in places)


def unverified_line(cells: int, sample: list[Place]) -> str:
    return (f"{cells} differing cells could not be checked: records not committed yet write "
            f"them again, at (partition, offset): {_places(sample)}. Run verify again once "
            "they are committed (`programuser-dagster lag` shows the committed offsets).")


# --- the store -------------------------------------------------------------------------------

# A key's row in the file: `several` (it has events in more than one partition), `differs`
# (the last comparison found a difference), `later` (a bit per group written again by a record
# not committed yet) and the place of the first such record, its groups' writers packed
# (partition -1: no retained event writes the group) and its checked columns' digests, 8 bytes
# each. Packed, because sqlite's conversion of each column to a Python object cost more than
# the lookup itself.
_SCHEMA = (
    "CREATE TABLE expected (program_id TEXT NOT NULL, user_id TEXT NOT NULL, "
    "several INTEGER NOT NULL, differs INTEGER NOT NULL DEFAULT 0, "
    "later INTEGER NOT NULL DEFAULT 0, later_partition INTEGER NOT NULL DEFAULT -1, "
    "later_offset INTEGER NOT NULL DEFAULT -1, writers BLOB NOT NULL, digests BLOB NOT NULL, "
    "PRIMARY KEY (program_id, user_id)) WITHOUT ROWID"
)
_WRITERS = struct.Struct("<" + "iqq" * len(COLUMN_GROUPS))
_NO_WRITER = (-1, 0, 0)
_NO_DIGEST = bytes(8)
_WHERE_KEY = "WHERE program_id = ? AND user_id = ?"
_LOOKUP_KEYS = 400  # keys per lookup query: 800 variables, far below sqlite's limit


class _Cells:
    """A key's writers and digests, merged in memory before they go to the file."""

    __slots__ = ("digests", "several", "writers")

    def __init__(self, several: bool = False, writers: list[Writer | None] | None = None,
                 digests: list[bytes] | None = None) -> None:
        self.several = several
        self.writers: list[Writer | None] = writers or [None] * len(COLUMN_GROUPS)
        self.digests: list[bytes] = digests or [_NO_DIGEST] * len(CHECKED)

    @classmethod
    def unpack(cls, several: int, writers: bytes, digests: bytes) -> _Cells:
        flat = _WRITERS.unpack(writers)
        return cls(bool(several),
                   [None if flat[i] < 0 else flat[i:i + 3] for i in range(0, len(flat), 3)],
                   [digests[i:i + 8] for i in range(0, len(digests), 8)])

    def pack(self) -> tuple[bool, bytes, bytes]:
        flat = [x for w in self.writers for x in (w or _NO_WRITER)]
        return self.several, _WRITERS.pack(*flat), b"".join(self.digests)

    def absorb(self, other: _Cells) -> None:
        """Keep per group the later writer of self and other (module docstring)."""
        mine, theirs = self.writers[0], other.writers[0]
        if mine is not None and theirs is not None and mine[0] != theirs[0]:
            self.several = True
        self.several = self.several or other.several
        for g, cells in enumerate(_GROUP_CELLS):
            new, old = other.writers[g], self.writers[g]
            if new is not None and (old is None or _wins(new, old)):
                self.writers[g] = new
                for _, slot in cells:
                    self.digests[slot] = other.digests[slot]


class ExpectedCells:
    """The expected (key, column) cells of the records fed to it, on disk (module docstring).

    Feed every record (add) before comparing. Use as a context manager, or close() it: the
    file is deleted then.
    """

    def __init__(self, directory: str | Path | None = None, cache_mib: int = 64,
                 pending_keys: int = 20_000) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="programuser-verify-", dir=directory))
        self._db = sqlite3.connect(self._dir / "expected.sqlite", isolation_level=None)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "locking_mode=EXCLUSIVE",
                       "temp_store=FILE", f"cache_size=-{cache_mib * 1024}"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute(_SCHEMA)
        self._pending: dict[Key, _Cells] = {}
        self._pending_keys = pending_keys
        # key -> (groups written by records not committed yet, the first such record's place)
        self._later: dict[Key, tuple[int, Place]] = {}
        self.records: Counter[int] = Counter()  # partition -> records fed
        self.not_written: Counter[str] = Counter()  # outcome -> records that write no row

    def __enter__(self) -> ExpectedCells:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        # isolation_level=None (autocommit): each batch of statements is one transaction.
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- feeding -------------------------------------------------------------------------------

    def add(self, partition: int, offset: int, timestamp_ms: int, value: bytes | None,
            *, counted: bool = True) -> None:
        """One retained record below the snapshot, in any order of partitions (a partition's
        own records in any order too: the higher offset wins). `counted=False`: a record
        committed after the snapshot (the re-check's newer expectation), not in the report's
        counts of records read."""
        if counted:
            self.records[partition] += 1
        try:
            row = _message_row(value)
        except _Rejected as rejected:
            if counted:
                self.not_written[rejected.outcome] += 1
            return
        key = (row[0], row[1])
        cells = self._pending.get(key)
        if cells is None:
            if len(self._pending) >= self._pending_keys:
                self.flush()
            cells = self._pending[key] = _Cells()
        writer = (partition, offset, timestamp_ms)
        first = cells.writers[0]
        if first is not None and first[0] != partition:
            cells.several = True
        for g, group in enumerate(_GROUP_CELLS):
            if row[group[0][0]] is NOT_WRITTEN:  # a group is written as a whole, or not
                continue
            old = cells.writers[g]
            if old is None or _wins(writer, old):
                cells.writers[g] = writer
                for index, slot in group:
                    cells.digests[slot] = digest(row[index])

    def flush(self) -> None:
        """Merge the keys held in memory into the file (keys_batches and compare do it)."""
        if not self._pending:
            return
        pending = sorted(self._pending.items())  # in key order: lookups and inserts stay local
        self._pending.clear()
        rows = []
        with self._transaction():
            stored = self._stored([key for key, _ in pending], "several, writers, digests")
            for key, cells in pending:
                earlier = stored.get(key)
                if earlier is not None:  # the key was flushed before: keep the later writers
                    cells.absorb(_Cells.unpack(*earlier))
                rows.append((*key, *cells.pack()))
            # An upsert, not a replace: a key's differs and later marks survive the records
            # the re-check adds.
            self._db.executemany(
                "INSERT INTO expected (program_id, user_id, several, writers, digests) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (program_id, user_id) DO UPDATE SET "
                "several = excluded.several, writers = excluded.writers, "
                "digests = excluded.digests", rows)

    def _stored(self, keys: list[Key], columns: str) -> dict[Key, tuple[Any, ...]]:
        """The stored `columns` of those of `keys` the file has. One query per 400 keys: each
        query releases the GIL once (the Cassandra driver's thread takes it meanwhile), and
        sqlite's per-statement cost dominates a lookup by key."""
        found: dict[Key, tuple[Any, ...]] = {}
        for i in range(0, len(keys), _LOOKUP_KEYS):
            part = keys[i:i + _LOOKUP_KEYS]
            # CROSS JOIN: probe the primary key per given key (an IN list would scan the table)
            sql = (f"WITH k(p, u) AS (VALUES {', '.join(['(?, ?)'] * len(part))}) "
                   f"SELECT e.program_id, e.user_id, {columns} FROM k CROSS JOIN expected AS e "
                   "ON e.program_id = k.p AND e.user_id = k.u")
            for row in self._db.execute(sql, [x for key in part for x in key]):
                found[(row[0], row[1])] = row[2:]
        return found

    def uncommitted(self, partition: int, offset: int, value: bytes | None) -> None:
        """A record past the committed offset (read for the re-check), in offset order: a run
        may be writing it, so the groups it writes cannot be checked on the keys that
        differed; they are counted as unverified, with this record's place."""
        try:
            row = _message_row(value)
        except _Rejected:
            return
        key = (row[0], row[1])
        mask, place = self._later.get(key, (0, (partition, offset)))
        for g, group in enumerate(_GROUP_CELLS):
            if row[group[0][0]] is not NOT_WRITTEN:
                mask |= 1 << g
        self._later[key] = (mask, min(place, (partition, offset)))
        if len(self._later) >= self._pending_keys:
            self._flush_later()

    def _flush_later(self) -> None:
        if not self._later:
            return
        rows = [(mask, *place, *key) for key, (mask, place) in sorted(self._later.items())]
        self._later.clear()
        with self._transaction():
            # The first place marked is kept (the UPDATE's expressions see the old `later`).
            self._db.executemany(
                "UPDATE expected SET later = later | ?1, "
                "later_partition = CASE WHEN later = 0 THEN ?2 ELSE later_partition END, "
                "later_offset = CASE WHEN later = 0 THEN ?3 ELSE later_offset END "
                "WHERE program_id = ?4 AND user_id = ?5 AND differs = 1", rows)

    # -- comparing -------------------------------------------------------------------------------

    def keys_in_several_partitions(self) -> int:
        self.flush()
        return self._db.execute("SELECT count(*) FROM expected WHERE several").fetchone()[0]

    def keys_batches(self, size: int = 500, *, differing: bool = False) -> Iterator[list[Key]]:
        """Every expected key (or only those the last comparison found differing), in key
        order, `size` at a time; safe to compare() between batches."""
        self.flush()
        self._flush_later()
        where = " AND differs = 1" if differing else ""
        last: Key | None = None
        while True:
            if last is None:
                sql = (f"SELECT program_id, user_id FROM expected WHERE 1{where} "
                       "ORDER BY program_id, user_id LIMIT ?")
                batch = self._db.execute(sql, (size,)).fetchall()
            else:
                sql = (f"SELECT program_id, user_id FROM expected WHERE (program_id, user_id) "
                       f"> (?, ?){where} ORDER BY program_id, user_id LIMIT ?")
                batch = self._db.execute(sql, (*last, size)).fetchall()
            if not batch:
                return
            yield batch
            last = batch[-1]

    def compare(self, key_rows: Mapping[Key, Mapping[str, Any] | None]) -> Differences:
        """Compare expected keys with the rows Cassandra returned for them (column -> value;
        None: no row). Differing keys are marked, for keys_batches(differing=True): the
        re-check compares those again, and only what it still finds is reported."""
        self.flush()
        self._flush_later()
        out = Differences()
        differing: list[Key] = []
        stored = self._stored(list(key_rows),
                              "later, later_partition, later_offset, writers, digests")
        for key, row in key_rows.items():
            found = stored.get(key)
            if found is None:
                raise KeyError("compare() was given a key that no record wrote")
            later, later_at, digests = found[0], (found[1], found[2]), found[4]
            writers = _WRITERS.unpack(found[3])  # p0, o0, t0, p1, ...
            home = (writers[0], writers[1])  # the last event of the key (it writes group 0)
            out.keys_checked += 1
            counts = out._partition(home[0])
            counts.keys += 1
            if row is None:
                out.rows_missing += 1
                counts.rows_missing += 1
                out.missing_sample = _merge_sample(out.missing_sample, [home])
                differing.append(key)
                continue
            differs = False
            for slot, column in enumerate(CHECKED):
                g = _GROUP_OF[slot]
                partition = writers[3 * g]
                if partition < 0:  # no retained event writes the column: anything goes
                    continue
                if digest(row.get(column)) == digests[8 * slot:8 * slot + 8]:
                    continue
                if later >> g & 1:  # differs, but a record not committed yet writes it again
                    out.cells_unverified += 1
                    out.unverified_sample = _merge_sample(out.unverified_sample, [later_at])
                    continue
                differs = True
                place = (partition, writers[3 * g + 1])
                out.cells_differing[column] += 1
                out.cell_samples[column] = _merge_sample(out.cell_samples.get(column, []),
                                                         [place])
                out._partition(partition).cells_differing += 1
            if differs:
                differing.append(key)
        out.differing_keys = len(differing)
        if differing:
            with self._transaction():
                self._db.executemany(f"UPDATE expected SET differs = 1 {_WHERE_KEY}", differing)
        return out

    def report(self, partitions: list[PartitionReport], found: Differences) -> VerifyReport:
        """The report of a verification: the partitions' offsets, and what was found."""
        for p in partitions:
            p.records = self.records.get(p.partition, 0)
            counts = found.partitions.get(p.partition, PartitionCounts())
            p.keys, p.rows_missing, p.cells_differing = (
                counts.keys, counts.rows_missing, counts.cells_differing)
        return VerifyReport(
            partitions=partitions,
            records_read=sum(self.records.values()),
            records_not_written=dict(self.not_written),
            keys_checked=found.keys_checked,
            rows_missing=found.rows_missing,
            missing_sample=list(found.missing_sample),
            cells_differing={c: n for c, n in found.cells_differing.items() if n},
            cell_samples={c: list(s) for c, s in found.cell_samples.items()},
            cells_unverified=found.cells_unverified,
            unverified_sample=list(found.unverified_sample),
            keys_in_several_partitions=self.keys_in_several_partitions(),
        )

