"""Staleness as the health job, the metrics and the alerts see it: a series is stale when its
newest stored bar is more than ``HEALTH_STALE_HOURS`` behind the newest bar its calendar expects to
be complete now (``last_completed_bar``), or when it has no bar at all. Calendar-aware: on a
Saturday morning an equity whose last bar is Friday's is not behind.

``is_stale`` is the one judgement; ``assess_staleness`` applies it to the whole watchlist, whose
newest bars come from one query (``integrity.series.newest_bars``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .. import series as series_module
from ..calendars import last_completed_bar
from ..conf import conf
from ..timeframes import iso


def stale_hours() -> float:
    """The health threshold (hours behind the expected bar); ``HEALTH_STALE_HOURS``."""
    return conf.HEALTH_STALE_HOURS


def hours_behind(last_bar: datetime, expected_bar: datetime) -> float:
    return max(0.0, (expected_bar - last_bar).total_seconds() / 3600)


def is_stale(last_bar: datetime | None, expected_bar: datetime | None, threshold_hours: float) -> bool:
    """Never loaded, or more than ``threshold_hours`` behind the newest expected bar."""
    if last_bar is None:
        return True
    if expected_bar is None:
        return False
    return hours_behind(last_bar, expected_bar) > threshold_hours


@dataclass
class SeriesFreshness(series_module.NewestBar):
    """A series' newest bar judged against its calendar's newest completed bar."""

    expected_bar: datetime | None = None
    hours_behind: float | None = None
    stale: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "calendar": self.calendar,
            "last_bar": iso(self.last_bar),
            "expected_bar": iso(self.expected_bar),
            "hours_stale": None if self.hours_behind is None else round(self.hours_behind, 2),
        }


def assess_staleness(now: datetime, errors: list | None = None) -> list[SeriesFreshness]:
    """All active series, judged against their calendar's newest completed bar at ``now``.

    A calendar that cannot be evaluated (a misconfigured instrument) is reported in ``errors`` and
    its series are skipped; the others are still judged.
    """
    threshold = stale_hours()
    expected: dict[tuple[str, str, str], datetime | None] = {}
    broken: set[tuple[str, str, str]] = set()
    judged = []
    for bar in series_module.newest_bars():
        key = (bar.calendar, bar.timeframe, bar.bar_alignment)
        if key in broken:
            continue
        if key not in expected:
            try:
                expected[key] = last_completed_bar(bar.calendar, bar.timeframe, now, bar.bar_alignment)
            except Exception as exc:  # noqa: BLE001 — one bad calendar must not hide the other series
                broken.add(key)
                if errors is not None:
                    errors.append({"check": "staleness",
                                   "error": f"calendar {bar.calendar!r} {bar.timeframe}: {exc}"})
                continue
        item = SeriesFreshness(**vars(bar), expected_bar=expected[key])
        if item.last_bar is not None and item.expected_bar is not None:
            item.hours_behind = hours_behind(item.last_bar, item.expected_bar)
        item.stale = is_stale(item.last_bar, item.expected_bar, threshold)
        judged.append(item)
    return judged
