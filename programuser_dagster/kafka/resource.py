"""The Kafka resource the ops, sensors and CLI receive: one ConfigurableResource, its parts each
in their own module, layered so that each uses only the ones below it:

    clients.py            KafkaClients     settings (fields, EnvVar secrets), TLS check, clients
    offsets.py            KafkaOffsets     partitions, watermarks, committed offsets, record times
    ranges.py             RangeReader      exact offset ranges, single offsets
    dead_letter_topic.py  DeadLetterTopic  the dead-letter topic's room and letters
    fence.py              FencedCommits    the fenced commit (FencedCommit), transactional ids

One resource rather than one per part: every part shares the same settings and the same
clients (the run's one assigned consumer, the observer), which Dagster builds and tears down
once per run; callers keep one `kafka` to ask.
"""

from __future__ import annotations

from confluent_kafka import Message

from ..core.offsets import CommitState, PartitionOffsets
from .errors import CommitUnknown, KafkaUnavailable, Superseded
from .fence import FencedCommit, FencedCommits, legacy_transactional_id, transactional_id
from .metadata import commit_metadata
from .offsets import append_time_ms, record_time_ms

# What callers import from here: the resource, what it raises, and the values it returns.
__all__ = [
    "CommitState",
    "CommitUnknown",
    "FencedCommit",
    "KafkaResource",
    "KafkaUnavailable",
    "Message",
    "PartitionOffsets",
    "Superseded",
    "append_time_ms",
    "commit_metadata",
    "legacy_transactional_id",
    "record_time_ms",
    "transactional_id",
]


class KafkaResource(FencedCommits):
    """The input topic, its consumer group and its dead-letter topic on one Kafka cluster."""
