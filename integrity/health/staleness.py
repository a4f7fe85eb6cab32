"""Staleness of the whole watchlist as the health job, the alerts, the admin dashboard and
``/metrics`` see it: every active series judged by the one definition, ``integrity.staleness``
(a due bar missing for longer than ``STALE_GRACE_MINUTES``, or no bar at all).

``assess_staleness`` reads the newest bar of every series in one query (``integrity.series.newest_bars``)
and judges them together at ``as_of`` (now, or a past moment replayed).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .. import series as series_module
from ..calendars.closures import NO_CLOSURES
from ..models import closures_by_symbol
from ..staleness import Judge, SeriesState, Verdict
from ..timeframes import iso


@dataclass
class SeriesFreshness(series_module.NewestBar):
    """A series' newest bar and the verdict of ``integrity.staleness`` on it."""

    verdict: Verdict | None = None

    @property
    def stale(self) -> bool:
        return bool(self.verdict and self.verdict.stale)

    @property
    def expected_bar(self) -> datetime | None:
        return self.verdict.expected_bar if self.verdict else None

    @property
    def due_at(self) -> datetime | None:
        return self.verdict.due_at if self.verdict else None

    @property
    def lag_hours(self) -> float | None:
        """Hours the oldest missing bar has been due (None: nothing due is missing, or no bars)."""
        return self.verdict.lag_hours if self.verdict else None

    def as_dict(self) -> dict[str, Any]:
        lag = self.lag_hours
        verdict = self.verdict.details() if self.verdict else {}
        return {
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "calendar": self.calendar,
            "last_bar": iso(self.last_bar),
            "expected_bar": verdict.get("expected_bar"),
            "first_missing": verdict.get("first_missing"),
            "missing_bars": self.verdict.missing_bars if self.verdict else None,
            "due_at": verdict.get("due_at"),
            # The lag: hours since the oldest missing bar was due (None: the series has no bars).
            "hours_stale": None if lag is None else round(lag, 2),
            "availability_delay_minutes": verdict.get("availability_delay_minutes"),
        }


def assess_staleness(as_of: datetime, errors: list | None = None) -> list[SeriesFreshness]:
    """All active series, judged at ``as_of``.

    A calendar that cannot be evaluated (a misconfigured instrument) is reported in ``errors`` and
    its series are skipped; the others are still judged.
    """
    newest = series_module.newest_bars()
    closures = closures_by_symbol({bar.symbol for bar in newest})
    states = [SeriesState(bar.calendar, bar.timeframe, bar.bar_alignment, bar.asset_class,
                          bar.availability_delay_minutes, bar.last_bar, closures.get(bar.symbol, NO_CLOSURES))
              for bar in newest]
    problems: list[dict[str, Any]] = []
    verdicts = Judge(as_of).judge_many(states, problems)
    if errors is not None:
        errors.extend({"check": "staleness", "error": f"calendar {p['grid']}: {p['error']}"} for p in problems)
    return [SeriesFreshness(**vars(bar), verdict=verdict)
            for bar, verdict in zip(newest, verdicts, strict=True) if verdict is not None]
