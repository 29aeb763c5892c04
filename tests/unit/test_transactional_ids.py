"""The fence's transactional ids (issue 24, item 8): one per (group, topic, partition), no two
alike, and unchanged for a group whose id was never ambiguous (pure, no server)."""

from __future__ import annotations

import pytest

from programuser_dagster.kafka.fence import legacy_transactional_id, transactional_id
from programuser_dagster.kafka.metadata import _clock, _token, commit_metadata


def test_group_a_b_with_topic_c_and_group_a_with_topic_b_c_have_different_ids() -> None:
    assert legacy_transactional_id("a.b", "c", 0) == legacy_transactional_id("a", "b.c", 0)
    assert transactional_id("a.b", "c", 0) != transactional_id("a", "b.c", 0)


@pytest.mark.parametrize(("group", "topic"), [
    ("a.b", "c"), ("a", "b.c"), ("a%2Eb", "c"), ("a%b", "c"), ("a", "b"), ("a.b.c", "d.e"),
    ("a.b", "c.d"), ("a", "b.c.d"), ("a b/ç", "t"),
])
def test_the_id_gives_back_its_group_topic_and_partition(group: str, topic: str) -> None:
    """Injective: the group (unescaped) ends at the first '.', the partition follows the last."""
    rest = transactional_id(group, topic, 12).removeprefix("programuser-dagster.")
    escaped, _, tail = rest.partition(".")
    got_topic, _, partition = tail.rpartition(".")
    assert escaped.replace("%2E", ".").replace("%25", "%") == group
    assert (got_topic, int(partition)) == (topic, 12)


@pytest.mark.parametrize("group", ["dev-programuser-group", "g_1", "grp"])
def test_a_group_without_dot_or_percent_keeps_its_id_and_its_fence(group: str) -> None:
    assert transactional_id(group, "x.y", 3) == legacy_transactional_id(group, "x.y", 3) \
        == f"programuser-dagster.{group}.x.y.3"


def test_the_commit_metadata_says_it_was_made_under_the_escaped_id() -> None:
    metadata = commit_metadata(7, 123)
    assert metadata == "programuser-dagster token=7 clock=123 id=2"
    assert commit_metadata(7, 123, host="worker 7") == metadata + " host=worker7"
    assert (_token(metadata), _clock(metadata)) == (7, 123)
