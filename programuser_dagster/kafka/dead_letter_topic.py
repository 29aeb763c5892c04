"""The dead-letter topic as the resource sees it: its room (max.message.bytes, described once)
and its committed letters. The letter's format is dead_letters.py; its delivery is part of the
fenced commit (fence.py)."""

from __future__ import annotations

from collections.abc import Iterator

from confluent_kafka import (
    KafkaException,
    Message,
)
from confluent_kafka.admin import AdminClient, ConfigResource

from .dead_letters import room_warning
from .errors import KafkaUnavailable
from .ranges import RangeReader

# What a dead-letter topic whose config cannot be read is assumed to allow: Kafka's default
# (1 MB), not ours, so that a letter never exceeds a topic left at the broker's default.
_UNDESCRIBED_DEAD_LETTER_BYTES = 1_000_000


class DeadLetterTopic(RangeReader):
    """The dead-letter topic: its size limit, its partitions and its letters."""

    def dead_letter_room(self) -> tuple[int, list[str]]:
        """The dead-letter topic's max.message.bytes, and warnings for the operator: the topic
        is smaller than the input topic (large letters lose their value), or its size could not
        be checked (then the size the stack gives it is assumed). Described once per resource.
        """
        if self._room is not None:
            return self._room
        room, described = self._describe_dead_letter_room()
        if described:  # a failed look-up is tried again by the next commit
            self._room = room
        return room

    def _describe_dead_letter_room(self) -> tuple[tuple[int, list[str]], bool]:
        """The room and its warnings, and whether the dead-letter topic's size was read."""
        admin = AdminClient(self._common_config())

        def limit(topic: str) -> int:
            [future] = admin.describe_configs(
                [ConfigResource("TOPIC", topic)], request_timeout=self.request_timeout_s
            ).values()
            return int(future.result()["max.message.bytes"].value)

        try:
            dead_letter = limit(self.dlq_topic)
        except (KafkaException, KeyError, ValueError) as exc:
            return (_UNDESCRIBED_DEAD_LETTER_BYTES, [
                f"Could not read the max.message.bytes of dead-letter topic {self.dlq_topic!r} "
                f"on {self.bootstrap_servers} ({exc}): does it exist, and may this client "
                "DescribeConfigs on it? Assuming Kafka's default of "
                f"{_UNDESCRIBED_DEAD_LETTER_BYTES} bytes: larger letters are sent as "
                "reason=too_large, without their value."
            ]), False
        try:
            source = limit(self.input_topic)
        except (KafkaException, KeyError, ValueError) as exc:
            return (dead_letter, [
                f"Could not read the max.message.bytes of input topic {self.input_topic!r} "
                f"({exc}), so could not check that its records fit the dead-letter topic "
                f"{self.dlq_topic!r} (max.message.bytes={dead_letter})."
            ]), False
        warning = room_warning(self.dlq_topic, dead_letter, self.input_topic, source)
        return (dead_letter, [warning] if warning else []), True

    def dead_letter_partitions(self) -> list[int]:
        """The dead-letter topic's partition ids."""
        try:
            md = self.consumer.list_topics(self.dlq_topic, timeout=self.request_timeout_s)
        except KafkaException as exc:
            raise KafkaUnavailable(
                f"{self._where()} did not return metadata for topic {self.dlq_topic!r}: {exc}."
                + self._login_hint()) from exc
        topic = md.topics.get(self.dlq_topic)
        if topic is None or topic.error is not None:
            raise KafkaUnavailable(f"Dead-letter topic {self.dlq_topic!r} does not exist on "
                                   f"{self.bootstrap_servers}: check KAFKA_DLQ_TOPIC.")
        return sorted(topic.partitions)

    def iter_dead_letters(self, partition: int) -> Iterator[list[Message]]:
        """The committed letters of one partition of the dead-letter topic, oldest first, up to
        its end when called (read_committed: letters of aborted commits are never seen)."""
        low, high = self._watermarks(self.dlq_topic, partition)
        yield from self.iter_range(partition, low, high, topic=self.dlq_topic,
                                   until_end_of_partition=True, batch_size=1000)
