"""Staleness, defined once: when a bar is *due*, and when a series is *stale*.

A bar is **due** once three things have happened:

* its interval has closed on the instrument's calendar (``calendars.last_completed_bar``, bar
  alignment honoured: sessions, holidays, half days and DST as the calendar knows them);
* the source has had time to publish it: the **availability delay**, the instrument's
  ``availability_delay_minutes``, else ``STALE_AVAILABILITY_DELAY_MINUTES`` of its asset class;
* our schedule has had a chance to fetch it: the first run of ``SCHEDULE_BACKFILL_CRON`` at or
  after close + delay. That run is the bar's **due_at**.

At a moment T (the *as-of*: now, or a past moment replayed), the **expected bar** is the newest
calendar bar whose close + delay is at or before the schedule's latest run at or before T: what the
schedule should have fetched by then. A series is **stale** when its newest stored bar is older
than the expected bar and the oldest missing bar has been due for more than ``STALE_GRACE_MINUTES``
(the **lag**, T - due_at, is over the grace), or when it has no bar at all. A bar that became due
after the last scheduled run is not late yet, so a daily series is never stale between the close
and the next backfill.

``Judge(as_of).judge_many(states)`` applies the definition to many series at once: the expected
bar is computed once per (calendar, timeframe, alignment, delay), the missing bars of the series
that are behind once per such group (``calendars.expected_stats``). The stale detector
(``quality/detectors/stale.py``) and the health job's watchlist sweep (``health/staleness.py``, read
by the alerts, the admin dashboard and ``/metrics``) both use it; nothing else judges staleness.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from .calendars import expected_stats, last_completed_bar, session_anchored
from .calendars.closures import NO_CLOSURES, Closures
from .conf import conf
from .schedules import run_at_or_after, run_at_or_before
from .timeframes import TIMEFRAME_DELTAS, iso, ns_to_datetime, to_ns

_SECOND = timedelta(seconds=1)
# A bar completes within its own length plus this much after it opens (a daily bar is stamped with
# its session date at 00:00 UTC and closes that UTC day or, for the forex day, that evening).
_CLOSE_SEARCH = timedelta(days=2)


def availability_delay(asset_class: str | None, minutes: int | None = None) -> timedelta:
    """The instrument's own delay when set, else its asset class default (0 for an unknown class)."""
    if minutes is None:
        minutes = conf.STALE_AVAILABILITY_DELAY_MINUTES.get(str(asset_class or ""), 0)
    return timedelta(minutes=int(minutes))


def grace() -> timedelta:
    """How long a due bar may be missing before its series is stale (``STALE_GRACE_MINUTES``)."""
    return timedelta(minutes=conf.STALE_GRACE_MINUTES)


def bar_close(calendar: str, timeframe: str, bar: datetime, alignment: str = "clock",
              closures: Closures = NO_CLOSURES) -> datetime:
    """When the expected bar opening at ``bar`` is complete on its calendar: open + length on the
    clock grid; otherwise (daily bars, session-anchored bars) the first second at which
    ``last_completed_bar`` reaches it (the session close, a shortened bar's interval close)."""
    step = TIMEFRAME_DELTAS[timeframe]
    if timeframe != "1d" and not session_anchored(calendar, timeframe, alignment):
        return bar + step
    lo, hi = bar, bar + step + _CLOSE_SEARCH

    def complete(at: datetime) -> bool:
        newest = last_completed_bar(calendar, timeframe, at, alignment, closures)
        return newest is not None and newest >= bar

    if not complete(hi):
        return hi
    while hi - lo > _SECOND:
        mid = lo + (hi - lo) / 2
        mid = mid.replace(microsecond=0)
        if mid <= lo:
            break
        if complete(mid):
            hi = mid
        else:
            lo = mid
    return hi


@dataclass(frozen=True)
class SeriesState:
    """What the judgement needs to know about one series."""

    calendar: str
    timeframe: str
    alignment: str
    asset_class: str | None
    delay_minutes: int | None  # the instrument's own availability delay (None: the asset class's)
    last_bar: datetime | None  # the newest stored bar (None: never loaded)
    closures: Closures = NO_CLOSURES  # the instrument's extra closed time (ns; integrity.calendars.closures)


@dataclass(frozen=True)
class Verdict:
    """The judgement of one series at ``as_of`` and everything it used."""

    as_of: datetime
    last_run: datetime  # the schedule's latest backfill run at or before as_of
    delay: timedelta
    grace: timedelta
    last_bar: datetime | None
    expected_bar: datetime | None  # the newest bar the schedule should have fetched by as_of
    first_missing: datetime | None = None  # the oldest expected bar after last_bar (None: none missing)
    missing_bars: int = 0  # expected bars after last_bar up to expected_bar
    due_at: datetime | None = None  # the scheduled run that should have fetched first_missing
    stale: bool = False

    @property
    def lag(self) -> timedelta | None:
        """How long the oldest missing bar has been due (None: nothing due is missing)."""
        return None if self.due_at is None else self.as_of - self.due_at

    @property
    def lag_hours(self) -> float | None:
        lag = self.lag
        return None if lag is None else lag.total_seconds() / 3600

    def details(self) -> dict[str, Any]:
        """What the judgement used, for a finding's details and the health report."""
        lag = self.lag_hours
        return {
            "as_of": iso(self.as_of),
            "last_bar": iso(self.last_bar),
            "expected_bar": iso(self.expected_bar),
            "first_missing": iso(self.first_missing),
            "due_at": iso(self.due_at),
            "lag_hours": None if lag is None else round(lag, 2),
            "last_scheduled_backfill": iso(self.last_run),
            "availability_delay_minutes": self.delay.total_seconds() / 60,
            "grace_minutes": self.grace.total_seconds() / 60,
        }


class Judge:
    """Staleness at one moment, with its schedule and calendar look-ups cached across series."""

    def __init__(self, as_of: datetime, *, cron: str | None = None, grace_period: timedelta | None = None):
        self.as_of = as_of
        self.cron = cron or conf.SCHEDULE_BACKFILL_CRON
        self.grace = grace() if grace_period is None else grace_period
        self.last_run = run_at_or_before(self.cron, as_of)
        self._expected: dict[tuple, datetime | None] = {}
        self._due: dict[tuple, datetime] = {}

    def expected_bar(self, calendar: str, timeframe: str, alignment: str, delay: timedelta,
                     closures: Closures = NO_CLOSURES) -> datetime | None:
        """The newest bar whose close + delay is at or before the latest scheduled run."""
        key = (calendar, timeframe, alignment, delay, closures)
        if key not in self._expected:
            self._expected[key] = last_completed_bar(calendar, timeframe, self.last_run - delay, alignment,
                                                     closures)
        return self._expected[key]

    def due_at(self, calendar: str, timeframe: str, alignment: str, delay: timedelta, bar: datetime,
               closures: Closures = NO_CLOSURES) -> datetime:
        """The first scheduled run at or after ``bar``'s close + delay."""
        key = (calendar, timeframe, alignment, delay, bar, closures)
        if key not in self._due:
            close = bar_close(calendar, timeframe, bar, alignment, closures)
            self._due[key] = run_at_or_after(self.cron, close + delay)
        return self._due[key]

    def judge_many(self, states: Sequence[SeriesState], errors: list[dict[str, Any]] | None = None,
                   ) -> list[Verdict | None]:
        """One verdict per state, in order. With ``errors``, a (calendar, timeframe, alignment) that
        cannot be evaluated is reported there ({"grid", "error"}) and its series get None; without,
        the error is raised."""
        verdicts: list[Verdict | None] = [None] * len(states)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, state in enumerate(states):
            delay = availability_delay(state.asset_class, state.delay_minutes)
            groups[(state.calendar, state.timeframe, state.alignment, delay, state.closures)].append(i)
        for (calendar, timeframe, alignment, delay, closures), members in groups.items():
            try:
                self._judge_group(calendar, timeframe, alignment, delay, closures, states, members, verdicts)
            except Exception as exc:
                if errors is None:
                    raise
                errors.append({"grid": f"{calendar} {timeframe} {alignment}", "error": str(exc)})
                for i in members:
                    verdicts[i] = None
        return verdicts

    def judge(self, state: SeriesState) -> Verdict:
        [verdict] = self.judge_many([state])
        assert verdict is not None
        return verdict

    def _judge_group(self, calendar: str, timeframe: str, alignment: str, delay: timedelta, closures: Closures,
                     states: Sequence[SeriesState], members: list[int], verdicts: list[Verdict | None]) -> None:
        expected = self.expected_bar(calendar, timeframe, alignment, delay, closures)
        base = {"as_of": self.as_of, "last_run": self.last_run, "delay": delay, "grace": self.grace,
                "expected_bar": expected}
        behind = []
        for i in members:
            last = states[i].last_bar
            if last is None:
                verdicts[i] = Verdict(last_bar=None, stale=True, **base)  # never loaded
            elif expected is None or last >= expected:
                verdicts[i] = Verdict(last_bar=last, **base)
            else:
                behind.append(i)
        if not behind:
            return
        lasts = np.array([to_ns(states[i].last_bar) for i in behind], dtype="int64")
        newest = np.full(len(behind), to_ns(expected), dtype="int64")
        # Expected bars strictly after the last stored one and up to the expected one (inclusive).
        between, firsts, _ = expected_stats(calendar, timeframe, lasts, newest, closed=False, alignment=alignment,
                                            closures=closures)
        for i, n, first in zip(behind, between, firsts, strict=True):
            first_missing = ns_to_datetime(int(first)) if n else expected
            due = self.due_at(calendar, timeframe, alignment, delay, first_missing, closures)
            verdicts[i] = Verdict(last_bar=states[i].last_bar, first_missing=first_missing, missing_bars=int(n) + 1,
                                  due_at=due, stale=self.as_of - due > self.grace, **base)
