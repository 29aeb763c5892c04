"""The fence's transactional id made unambiguous (issue 24, item 8), on the real broker.

Before, group 'a.b' + topic 'c' and group 'a' + topic 'b.c' shared one id and fenced each
other's commits. Now the group is escaped; a partition still committed under the old id moves
over with its next commit, made under the old id so that it fences a run of the code before
the upgrade (a zombie) that read the same state.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from devtools.stack import delete_topics, ensure_topics
from programuser_dagster.kafka.resource import (
    CommitState,
    legacy_transactional_id,
    transactional_id,
)
from programuser_dagster.resources import kafka_resource
from programuser_dagster.settings import Settings
from tests.support.pipeline import event, produce

pytestmark = pytest.mark.stack


@pytest.fixture
def colliding(stack: Settings) -> Iterator[tuple[Settings, Settings]]:
    """Two pipelines whose ids collided before issue 24: A = group 'g-T.x' + topic 't-T',
    B = group 'g-T' + topic 'x.t-T'; their topics (1 partition each), removed afterwards."""
    tag = uuid.uuid4().hex[:8]
    a = dataclasses.replace(stack, kafka_group_id=f"g-{tag}.x", kafka_input_topic=f"t-{tag}",
                            kafka_dlq_topic="")
    b = dataclasses.replace(stack, kafka_group_id=f"g-{tag}", kafka_input_topic=f"x.t-{tag}",
                            kafka_dlq_topic="")
    topics = {a.kafka_input_topic: 1, b.kafka_input_topic: 1, a.kafka_dlq_topic: 1,
              b.kafka_dlq_topic: 1}
    ensure_topics(stack.kafka_bootstrap_servers, topics,
                  dead_letter={a.kafka_dlq_topic, b.kafka_dlq_topic})
    try:
        yield a, b
    finally:
        delete_topics(stack.kafka_bootstrap_servers, list(topics))


def _old_code_commit_begun(s: Settings, end: int) -> Producer:
    """A committer of the code before issue 24 (a zombie), inside its transaction: it has
    fenced on the old id, checked the state and sent its offset; only its commit is left."""
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap_servers,
                         "transactional.id": legacy_transactional_id(
                             s.kafka_group_id, s.kafka_input_topic, 0)})
    producer.init_transactions(30)
    producer.begin_transaction()
    group = Consumer({"bootstrap.servers": s.kafka_bootstrap_servers,
                      "group.id": s.kafka_group_id})
    try:
        producer.send_offsets_to_transaction(
            [TopicPartition(s.kafka_input_topic, 0, end,
                            metadata="programuser-dagster token=1 clock=1")],
            group.consumer_group_metadata(), 30)
    finally:
        group.close()
    return producer


def test_the_old_ids_collided_and_the_new_ones_do_not(colliding: tuple[Settings, Settings]) -> None:
    a, b = colliding
    assert kafka_resource(a).transactional_id(0) != kafka_resource(b).transactional_id(0)
    assert legacy_transactional_id(a.kafka_group_id, a.kafka_input_topic, 0) \
        == kafka_resource(b).transactional_id(0)


def test_the_first_commit_after_the_upgrade_fences_a_zombie_of_the_old_code(
    colliding: tuple[Settings, Settings],
) -> None:
    a, _ = colliding
    produce(a, [event("p", f"u{i}") for i in range(3)])
    kafka = kafka_resource(a)
    zombie = _old_code_commit_begun(a, 2)
    try:
        state = kafka.partition_offsets(0).state
        assert state == CommitState(None, 0)
        with kafka.fenced_commit(0, state) as txn:
            assert txn.commit(3) == CommitState(3, 1)
        with pytest.raises(KafkaException):  # fenced: the new code's commit took its id
            zombie.commit_transaction(30)
        assert kafka.offsets([0], settled=True)[0].state == CommitState(3, 1)
        # Committed with `id=2`: from now on the partition is fenced on the escaped id.
        assert kafka._fence_id(0) == transactional_id(a.kafka_group_id, a.kafka_input_topic, 0)
    finally:
        kafka.close()


def test_after_the_upgrade_two_pipelines_whose_old_ids_collided_commit_side_by_side(
    colliding: tuple[Settings, Settings],
) -> None:
    """A's commit in progress is not fenced by B's (today's main: it was, and failed)."""
    a, b = colliding
    produce(a, [event("p", "u")])
    produce(b, [event("p", "u")])
    ka, kb = kafka_resource(a), kafka_resource(b)
    try:
        with ka.fenced_commit(0, ka.partition_offsets(0).state) as txn:
            txn.commit(1)  # A's partition moves to the escaped id
        produce(a, [event("p", "v")])
        with ka.fenced_commit(0, ka.partition_offsets(0).state) as in_progress:
            with kb.fenced_commit(0, kb.partition_offsets(0).state) as other:
                assert other.commit(1) == CommitState(1, 1)
            assert in_progress.commit(2) == CommitState(2, 2)
        assert (ka.offsets([0], settled=True)[0].state, kb.offsets([0], settled=True)[0].state) == (
            CommitState(2, 2), CommitState(1, 1))
    finally:
        ka.close()
        kb.close()
