"""core/kept_commit.py: when Kafka's committed state has lost a partition's last commit, and
when a commit is renewed; plus the commit time's round trip through the metadata and replay's
resume rule (incidents/replay.py: plan_rewind)."""

from __future__ import annotations

import pytest

from programuser_dagster.core.kept_commit import (
    DEFAULT_OFFSETS_RETENTION_S,
    KeptCommit,
    lost,
    lost_line,
    renew_after_s,
    renewal_due,
    resume_command,
)
from programuser_dagster.core.offsets import PartitionOffsets
from programuser_dagster.incidents.outcomes import Refused
from programuser_dagster.incidents.replay import plan_rewind
from programuser_dagster.kafka.metadata import _at, commit_metadata

KEPT = KeptCommit(partition=2, offset=1234, token=7, clock=5_000_000, partitions=4,
                  committed_at=1_796_000_000.0, host="worker-1")


def at(committed: int | None, token: int = 0, low: int = 0, high: int = 2000,
       committed_at: float = 0.0) -> PartitionOffsets:
    return PartitionOffsets(partition=2, low=low, high=high, committed=committed, token=token,
                            committed_at=committed_at)


def test_no_kept_record_is_a_first_run_not_a_loss() -> None:
    assert not lost(at(None), None)
    assert not lost(at(10, 1), None)


def test_a_missing_committed_offset_with_a_kept_one_is_lost() -> None:
    assert lost(at(None), KEPT)


def test_an_older_state_behind_the_kept_one_is_lost() -> None:
    assert lost(at(1000, 5), KEPT)
    assert lost(at(1000, 0), KEPT)  # another tool's commit: no token


def test_a_later_commit_of_ours_behind_the_kept_offset_is_a_deliberate_rewind() -> None:
    # replay backwards commits the next token: even if its kept record was not written.
    assert not lost(at(1000, 8), KEPT)


def test_the_kept_state_itself_or_a_later_one_is_not_lost() -> None:
    assert not lost(at(1234, 7), KEPT)
    assert not lost(at(1300, 8), KEPT)


def test_the_line_names_the_loss_the_time_and_the_exact_replay_command() -> None:
    line = lost_line(at(None, low=100), KEPT)
    assert "Kafka no longer has the committed offset (last committed 1234 at " in line
    assert KEPT.when() in line and "by worker-1" in line
    assert "offsets.retention.minutes" in line
    assert "its next run would start at 100 and ingest history again" in line
    assert ";" not in line  # the sensor's skip reason joins partitions' lines with "; "
    assert ("`programuser-dagster replay --partition 2 --to-offset 1234 --apply`") in line
    assert "\n" not in line
    behind = lost_line(at(1000, 3), KEPT)
    assert behind.startswith("Kafka's committed offset 1000 (token 3) is behind the last commit")
    assert resume_command(2, 1234) in behind


def test_renewal_threshold_is_half_the_broker_retention_unless_set_below_it() -> None:
    assert renew_after_s(None, 600.0) == (300.0, None)
    assert renew_after_s(60, 600.0) == (60.0, None)
    after, warning = renew_after_s(600, 600.0)
    assert after == 300.0 and warning is not None
    assert "PROGRAMUSER_OFFSET_RENEW_S=600 is not below" in warning
    after, warning = renew_after_s(None, None)
    assert after == DEFAULT_OFFSETS_RETENTION_S / 2
    assert warning is not None and "10080 minutes" in warning


@pytest.mark.parametrize(("committed", "committed_at", "due"), [
    (None, 0.0, False),  # never committed: nothing to renew
    (10, 0.0, True),  # committed before commits recorded their time: of unknown age
    (10, 1000.0, False),  # 50 s old
    (10, 950.0, True),  # 100 s old
])
def test_a_commit_is_due_for_renewal_once_older_than_the_threshold(
    committed: int | None, committed_at: float, due: bool
) -> None:
    assert renewal_due(at(committed, committed_at=committed_at), 1050.0, 100.0) is due


def test_the_commit_time_round_trips_through_the_metadata() -> None:
    text = commit_metadata(3, 99, 4, (), "h", at=1_796_000_000.7)
    assert " at=1796000000 " in text and _at(text) == 1_796_000_000.0
    assert _at(commit_metadata(3, 99)) == 0.0  # before commit times: unknown


def test_replay_resumes_a_lost_partition_at_its_kept_commit() -> None:
    rewind = plan_rewind(at(None, low=100), 1234, "offset 1234", kept=KEPT)
    assert rewind.resumed == KEPT and rewind.start == 1234 and rewind.records_again == 0
    assert rewind.due  # nothing to read again, but the commit to restore
    assert "Kafka lost its last commit (1234 at" in rewind.line(applied=True)
    earlier = plan_rewind(at(None, low=100), 1000, "offset 1000", kept=KEPT)
    assert earlier.records_again == 234
    with pytest.raises(Refused, match="past where the next run starts \\(1234\\)"):
        plan_rewind(at(None, low=100), 1235, "offset 1235", kept=KEPT)


def test_replay_of_a_lost_partition_whose_kept_offset_retention_deleted_starts_at_the_log() -> None:
    rewind = plan_rewind(at(None, low=1500), 1234, "offset 1234", kept=KEPT)
    assert rewind.target == 1500 and rewind.start == 1500 and rewind.due


def test_replay_of_a_healthy_partition_is_unchanged_by_its_kept_commit() -> None:
    rewind = plan_rewind(at(1234, 7), 1000, "offset 1000", kept=KEPT)
    assert rewind.resumed is None and rewind.records_again == 234
    with pytest.raises(Refused):
        plan_rewind(at(1234, 7), 1300, "offset 1300", kept=KEPT)
