"""A commit whose outcome is unknown (issue 24, item 9), on the real servers: the broker commits
the run's transaction, but its answer is lost and so is the read that would tell. The run must
say "unknown: check with lag", not "not committed" (it was committed)."""

from __future__ import annotations

from typing import Any

import pytest

from programuser_dagster.kafka.resource import FencedCommit, KafkaResource, KafkaUnavailable
from programuser_dagster.settings import Settings
from tests.support.pipeline import event, failure_text, offsets, produce, run_partition

pytestmark = pytest.mark.stack


def test_a_commit_whose_answer_is_lost_is_unknown_not_uncommitted(
    instance, kafka_topics: Settings, monkeypatch
) -> None:
    s = kafka_topics
    produce(s, [event("p", "u0"), event("p", "u1")])
    real_call, real_offsets = FencedCommit.call, KafkaResource.offsets
    lost: list[bool] = []

    def answer_lost(self: FencedCommit, what: str, fn: Any, patience_s: Any = None) -> Any:
        result = real_call(self, what, fn, patience_s)  # the broker really does it
        if what == "commit the transaction":
            lost.append(True)
            raise KafkaUnavailable("Kafka did not answer the commit (its answer was lost).")
        return result

    def unanswered_after_the_loss(self: KafkaResource, *args: Any, **kwargs: Any) -> Any:
        if lost:
            raise KafkaUnavailable("Kafka did not return the offsets.")
        return real_offsets(self, *args, **kwargs)

    monkeypatch.setattr(FencedCommit, "call", answer_lost)
    monkeypatch.setattr(KafkaResource, "offsets", unanswered_after_the_loss)
    result = run_partition(instance, s)
    monkeypatch.undo()

    assert lost and not result.success
    text = failure_text(result)
    assert "was not committed" not in text
    assert ("Whether offset 2 of partition 0 was committed is unknown (the broker did not "
            "answer the check either): check with `programuser-dagster lag`. Committed 2: it "
            "was; none: it was not.") in text
    assert offsets(s).committed == 2  # and indeed it was
