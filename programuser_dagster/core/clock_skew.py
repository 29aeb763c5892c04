"""Clock skew: a run refuses to write when its host's clock is too far from the partition's
clock or the broker's (docs/contract.md: Write times). Pure: the caller reads the clocks.

Write times order a superseded run's writes below the next run's only while the hosts'
clocks agree (clock.py): a host whose clock is behind commits a clock the next run may not
pass, and one whose clock is ahead writes times no later run beats. Two clocks to compare with:

- the partition's committed clock. A healthy one is ahead of the wall clock by at most a run's
  length in microseconds (`lead_allowed_us`: the cap on a run's length), so beyond that plus
  the bound, this host is behind, or the host that committed it was ahead (or another tool
  wrote it): either way a run here would write that far in the future, so it stops;
- the broker's append times (topics with message.timestamp.type=LogAppendTime only: with
  CreateTime a record's time is its producer's clock and says nothing of ours). The broker
  appended a record before we read it, so a record later than our clock by more than the
  bound proves this host behind; an old record proves nothing about a host ahead, but one
  close to our clock vouches for it, and then a committed clock far ahead is the wrong one.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

SKEW_VARIABLE = "PROGRAMUSER_CLOCK_SKEW_MAX_S"


def utc_time(us: int) -> str:
    """A write time (us) as an ISO-8601 UTC time, to the millisecond."""
    return datetime.fromtimestamp(us / 1e6, UTC).isoformat(timespec="milliseconds")


def _s(us: int) -> str:
    return f"{us / 1e6:.3f} s"


def reset_command(partition: int) -> str:
    return f"`programuser-dagster reset-clock --partition {partition}`"


def skew_refusal(
    *,
    partition: int,
    host: str,
    now_us: int,
    bound_us: int,
    committed_clock_us: int = 0,
    committed_by: str = "",
    lead_allowed_us: int = 0,
    append_times_ms: Iterable[int] = (),
) -> str | None:
    """Why a run on `host` (its clock reads `now_us`) must not write partition `partition`:
    one message naming the skew and the host, or None when the clocks agree within bounds.

    `committed_clock_us`: the clock committed with the partition's offset (0: none), by the
    host `committed_by` ('' when unknown); `append_times_ms`: broker append times of records
    of the partition (LogAppendTime only)."""
    newest = max(append_times_ms, default=None)
    newest_us = None if newest is None else newest * 1000
    if newest_us is not None and newest_us - now_us > bound_us:
        return (
            f"This host's clock ({host}) is at least {_s(newest_us - now_us)} behind the Kafka "
            f"broker's: partition {partition} holds a record the broker appended at "
            f"{utc_time(newest_us)}, after this host's now ({utc_time(now_us)}); {SKEW_VARIABLE} "
            f"allows {_s(bound_us)}. Its writes could lose to a superseded run's. Nothing was "
            f"written. Fix the time synchronisation (NTP) of {host}, then run the range again."
        )
    lead = committed_clock_us - now_us
    if committed_clock_us and lead > lead_allowed_us + bound_us:
        by = f"host {committed_by}" if committed_by else "a host the commit does not name"
        vouched = newest_us is not None and now_us - newest_us <= bound_us
        cause = (
            "This host agrees with the broker's append times, so the committed clock is wrong "
            "(its host's clock was ahead, or another tool wrote it)." if vouched else
            f"Either the clock of {committed_by or 'that host'} was ahead or this host's is "
            "behind: check the time synchronisation (NTP) of both."
        )
        return (
            f"Partition {partition}'s committed write clock ({utc_time(committed_clock_us)}, "
            f"committed from {by}) is {_s(lead)} ahead of this host's clock ({host}, "
            f"{utc_time(now_us)}): more than a run's length ({_s(lead_allowed_us)}) plus "
            f"{SKEW_VARIABLE} ({_s(bound_us)}). {cause} Nothing was written. A lead of a few "
            "seconds passes by itself: run the range again once this host's clock has caught "
            "up. If the committed clock is wrong, reset it from a host whose clock is right: "
            f"{reset_command(partition)} (a dry run; add --apply); until the wall clock "
            f"reaches {utc_time(committed_clock_us)}, later events do not overwrite cells written "
            "at those wrong times."
        )
    return None
