"""Row values in the CQL native protocol's encoding, made a column at a time.

cassandra-driver binds a prepared statement row by row, calling each column type's serialize()
through its generic machinery: ~40 us a row of this table on the bench machine, the largest
part of the client's cost of a write (the location map alone ~14 us, each date ~4 us). The same
bytes made a column at a time, with the types of this table done directly, cost a third of
that, and the statements carry them as the driver's own bind would have.

Only values of exactly the expected Python type take the direct path; any other value (and any
other column type) is encoded by the driver's serialize(), so what cannot be encoded fails
with the driver's own error. tests/integration/test_cql_encoding.py checks the bytes against the
driver's.
"""

from __future__ import annotations

import datetime
import struct
from collections.abc import Callable, Sequence
from typing import Any

from cassandra import cqltypes
from cassandra.query import UNSET_VALUE, BoundStatement, PreparedStatement

from ..core.events import NOT_WRITTEN

_int32 = struct.Struct(">i").pack
_int64 = struct.Struct(">q").pack
_uint32 = struct.Struct(">I").pack
# CQL `date`: days since 1970-01-01 as an unsigned int centred on 2**31.
_DATE_OFFSET = datetime.date(1970, 1, 1).toordinal() - 2**31

Encoded = Any  # bytes, None (null) or UNSET_VALUE (the column is left alone)


def encode_columns(
    columns: Sequence[list[Any]], statement: PreparedStatement
) -> list[tuple[Encoded, ...]]:
    """Rows (as tuples of encoded values) from the statement's columns of Python values;
    NOT_WRITTEN and UNSET_VALUE become UNSET_VALUE, None a null."""
    if statement.protocol_version < 4:  # UNSET_VALUE, and 4-byte lengths inside collections
        raise ValueError("Encoding needs native protocol v4 or later.")
    metadata = statement.column_metadata
    encoded = [
        _encode_column(meta, values, statement.protocol_version)
        for meta, values in zip(metadata, columns, strict=True)
    ]
    for i in statement.routing_key_indexes or ():
        if any(v is UNSET_VALUE for v in encoded[i]):  # as the driver's bind() refuses it
            raise ValueError(
                f"Cannot bind UNSET_VALUE as a part of the routing key '{metadata[i].name}'"
            )
    return list(zip(*encoded, strict=True))


def bound(statement: PreparedStatement, values: tuple[Encoded, ...]) -> BoundStatement:
    """The statement bound to values encode_columns() made (the driver's bind() would redo it)."""
    result = BoundStatement(statement)
    result.values = values
    result.raw_values = values  # what the driver shows of a bound statement in its messages
    return result


def _encode_column(meta: Any, values: list[Any], protocol_version: int) -> list[Encoded]:
    cql_type = meta.type

    def by_driver(value: Any) -> Encoded:
        if value is None:
            return None
        if value is NOT_WRITTEN or value is UNSET_VALUE:
            return UNSET_VALUE
        try:
            return cql_type.serialize(value, protocol_version)
        except (TypeError, struct.error) as exc:  # worded as the driver's bind() words it
            raise TypeError(
                f"Received an argument of invalid type for column \"{meta.name}\". "
                f"Expected: {cql_type}, Got: {type(value)}; ({exc})"
            ) from exc

    direct = _direct_encoder(cql_type)
    if direct is None:
        return [by_driver(v) for v in values]
    return direct(values, by_driver)


Direct = Callable[[list[Any], Callable[[Any], Encoded]], list[Encoded]]


def _direct_encoder(cql_type: type) -> Direct | None:
    if issubclass(cql_type, cqltypes.UTF8Type):  # text, varchar
        return _texts
    if issubclass(cql_type, cqltypes.BooleanType):
        return _booleans
    if issubclass(cql_type, cqltypes.LongType):  # bigint, and the USING TIMESTAMP variable
        return _longs
    if issubclass(cql_type, cqltypes.SimpleDateType):
        return _dates
    if issubclass(cql_type, cqltypes.MapType) and all(
        issubclass(t, cqltypes.UTF8Type) for t in cql_type.subtypes
    ):
        return _text_maps
    return None


def _texts(values: list[Any], other: Callable[[Any], Encoded]) -> list[Encoded]:
    return [v.encode() if type(v) is str else other(v) for v in values]


def _booleans(values: list[Any], other: Callable[[Any], Encoded]) -> list[Encoded]:
    return [b"\x01" if v is True else b"\x00" if v is False else other(v) for v in values]


def _longs(values: list[Any], other: Callable[[Any], Encoded]) -> list[Encoded]:
    return [_int64(v) if type(v) is int and -2**63 <= v < 2**63 else other(v) for v in values]


def _dates(values: list[Any], other: Callable[[Any], Encoded]) -> list[Encoded]:
    return [
        _uint32(v.toordinal() - _DATE_OFFSET) if type(v) is datetime.date else other(v)
        for v in values
    ]


def _text_maps(values: list[Any], other: Callable[[Any], Encoded]) -> list[Encoded]:
    return [_text_map(v, other) if type(v) is dict else other(v) for v in values]


def _text_map(mapping: dict[Any, Any], other: Callable[[Any], Encoded]) -> Encoded:
    """[n][len key][key][len value][value]... in the dict's order, as the driver writes it."""
    parts = [_int32(len(mapping))]
    append = parts.append
    try:
        for key, value in mapping.items():
            append(_MAP_KEYS.get(key) or _map_key(key))  # never empty: it has its length
            v = value.encode()
            n = len(v)
            append(_LENGTHS[n] if n < _SHORT else _int32(n))
            append(v)
    except AttributeError:  # a key or value that is not text: the driver's error, if any
        return other(mapping)
    return b"".join(parts)


# The 4-byte lengths of short values, made once (a location's name, id or code).
_SHORT = 1024
_LENGTHS = tuple(_int32(n) for n in range(_SHORT))


# The map's keys are a few dozen location names (<type>_name/_id/_code): encoded once each.
_MAP_KEYS: dict[str, bytes] = {}


def _map_key(key: str) -> bytes:
    encoded = key.encode()
    encoded = _int32(len(encoded)) + encoded
    if len(_MAP_KEYS) < 16384:  # bounds hostile input, like events._LOCATION_KEYS
        _MAP_KEYS[key] = encoded
    return encoded
