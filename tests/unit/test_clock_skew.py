"""The clock-skew rule (issue 24, item 5): a run refuses to write when its host's clock is
behind the broker's append times, or the committed clock is ahead of it, beyond the bound;
healthy leads pass (pure, no server: the clocks are given)."""

from __future__ import annotations

import pytest

from programuser_dagster.core.clock_skew import skew_refusal
from programuser_dagster.settings import DEFAULTS, MAX_RANGE_MESSAGES

NOW = 1_800_000_000_000_000  # us
S = 1_000_000
BOUND = int(DEFAULTS.clock_skew_max_s * S)


def refusal(**given: object) -> str | None:
    args: dict[str, object] = {"partition": 3, "host": "worker-7", "now_us": NOW,
                               "bound_us": BOUND, "lead_allowed_us": MAX_RANGE_MESSAGES}
    return skew_refusal(**{**args, **given})  # type: ignore[arg-type]


def test_the_default_bound_is_two_seconds() -> None:
    assert BOUND == 2 * S


@pytest.mark.parametrize("clock", [
    0,  # no committed clock
    NOW - 3600 * S,  # an idle partition: its last commit long ago
    NOW + 100_000,  # a default run's lead
    NOW + MAX_RANGE_MESSAGES + BOUND,  # the longest run's lead, plus the bound
])
def test_a_healthy_committed_clock_passes(clock: int) -> None:
    assert refusal(committed_clock_us=clock) is None


def test_a_committed_clock_ahead_beyond_a_runs_length_and_the_bound_is_refused() -> None:
    clock = NOW + MAX_RANGE_MESSAGES + BOUND + 1
    why = refusal(committed_clock_us=clock, committed_by="fast-host")
    assert why is not None
    assert why.startswith("Partition 3's committed write clock (")
    assert "committed from host fast-host) is 3.000 s ahead of this host's clock (worker-7" in why
    assert "PROGRAMUSER_CLOCK_SKEW_MAX_S (2.000 s)" in why
    assert "Either the clock of fast-host was ahead or this host's is behind" in why
    assert "Nothing was written" in why
    assert "`programuser-dagster reset-clock --partition 3` (a dry run; add --apply)" in why
    assert "\n" not in why


def test_a_shifted_host_against_a_control_host() -> None:
    """One committed clock; the control host (right clock) passes, a host 30 s behind stops."""
    clock = NOW + 100_000  # committed by a healthy run just now
    assert refusal(committed_clock_us=clock) is None
    behind = refusal(committed_clock_us=clock, now_us=NOW - 30 * S, host="slow-host")
    assert behind is not None and "30.100 s ahead of this host's clock (slow-host" in behind


def test_old_append_times_prove_nothing_and_pass() -> None:
    assert refusal(append_times_ms=[(NOW - 3600 * S) // 1000]) is None


def test_an_append_time_later_than_this_hosts_clock_beyond_the_bound_is_refused() -> None:
    assert refusal(append_times_ms=[(NOW + BOUND) // 1000]) is None  # within the bound
    why = refusal(append_times_ms=[(NOW - 60 * S) // 1000, (NOW + 5 * S) // 1000])
    assert why is not None
    assert why.startswith("This host's clock (worker-7) is at least 5.000 s behind the Kafka "
                          "broker's: partition 3 holds a record the broker appended at ")
    assert "Fix the time synchronisation (NTP) of worker-7" in why


def test_a_host_the_broker_vouches_for_names_the_committed_clock_as_the_wrong_one() -> None:
    why = refusal(committed_clock_us=NOW + 3600 * S, append_times_ms=[NOW // 1000 - 500])
    assert why is not None
    assert "This host agrees with the broker's append times, so the committed clock is wrong" \
        in why
    assert "committed from a host the commit does not name" in why  # no host= (older)


def test_reset_clock_resets_only_a_clock_ahead_beyond_any_runs_lead() -> None:
    from programuser_dagster.core.offsets import PartitionOffsets
    from programuser_dagster.incidents.reset_clock import ClockReset

    def at(clock: int, committed: int | None = 5) -> ClockReset:
        offsets = PartitionOffsets(0, 0, 9, committed, 3, clock, clock_host="fast-host")
        return ClockReset(offsets, NOW)

    assert not at(NOW + MAX_RANGE_MESSAGES).wrong  # a healthy lead: lowering it would reorder
    assert not at(NOW + 3600 * S, committed=None).wrong  # no commit to carry a clock
    wrong = at(NOW + 3600 * S)
    assert wrong.wrong
    assert wrong.line(applied=False).startswith(
        "partition 0: committed offset 5, clock 2027-01-15T09:00:00.000+00:00 (committed from "
        "host fast-host), 3600.000 s ahead of this host's clock: would reset to this host's "
        "clock (2027-01-15T08:00:00.000+00:00)")
    assert "nothing to reset" in at(NOW).line(applied=False)
