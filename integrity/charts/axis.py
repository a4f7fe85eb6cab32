"""The x axis of a price chart: where a bar, a span of bars or a time is drawn.

* **Session-compressed** (a series with a trading calendar: exchanges and the forex week): x is the
  index of the bar among the bars the calendar expects in the window (``calendars.expected_ns``, the
  instrument's closures included), so nights, weekends and holidays take no room and a missing bar is
  a hole one bar wide, whatever the clock time around it. Session breaks (consecutive expected bars
  further apart than one bar) are marked.
* **Linear** (24/7 series, a symbol with no known calendar, or a window too long to index): x is
  clock time. Missing bars still show as holes when the calendar is known.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..calendars import CRYPTO_CALENDAR, NO_CLOSURES, Closures, expected_ns, validate_calendar_code
from ..timeframes import BarAlignment, timeframe_ns

# Windows longer than this many bars are drawn on a linear axis without holes (no array that big).
MAX_EXPECTED = 500_000


@dataclass(frozen=True)
class Axis:
    lo: int  # the window [lo, hi), ns
    hi: int
    step: int  # the bar length, ns
    left: float  # the plot area, px
    right: float
    expected: np.ndarray | None  # expected bar opens in [lo, hi) (None: calendar unknown)
    compressed: bool
    intraday: bool

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def slot(self) -> float:
        """The width of one bar, px."""
        if self.compressed:
            return self.width / len(self.expected)
        return self.width * self.step / max(self.hi - self.lo, 1)

    def _at(self, t: np.ndarray) -> np.ndarray:
        """x of times on a linear axis."""
        return self.left + (np.asarray(t, dtype="float64") - self.lo) / max(self.hi - self.lo, 1) * self.width

    def _index(self, ts: np.ndarray) -> np.ndarray:
        """Fractional bar index of bar times on a compressed axis: an expected bar its index, any
        other time halfway between the expected bars around it."""
        i = np.searchsorted(self.expected, ts, side="left")
        exact = np.zeros(len(ts), dtype=bool)
        inside = i < len(self.expected)
        exact[inside] = self.expected[i[inside]] == ts[inside]
        return np.where(exact, i, i - 0.5).astype("float64")

    def x(self, ts) -> np.ndarray:
        """x of the centre of the bars opening at ``ts`` (int64 ns)."""
        ts = np.asarray(ts, dtype="int64")
        if self.compressed:
            return self.left + (self._index(ts) + 0.5) * self.slot
        return self._at(ts + self.step // 2)

    def band(self, a: int, b: int) -> tuple[float, float]:
        """The x extent of the bars opening in [a, b)."""
        if self.compressed:
            ia, ib = np.searchsorted(self.expected, [a, b], side="left")
            return self.left + ia * self.slot, self.left + ib * self.slot
        x0, x1 = self._at(np.array([a, b]))
        return float(x0), float(x1)

    def place(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For tick candidates: their x and the time shown there (compressed: the first expected bar
        at or after the candidate; NaN x when there is none)."""
        times = np.asarray(times, dtype="int64")
        if not self.compressed:
            return self._at(times), times
        i = np.searchsorted(self.expected, times, side="left")
        inside = i < len(self.expected)
        xs = np.full(len(times), np.nan)
        xs[inside] = self.left + (i[inside] + 0.5) * self.slot
        shown = np.where(inside, self.expected[np.minimum(i, len(self.expected) - 1)], times)
        return xs, shown

    def session_breaks(self) -> list[float]:
        """x of each break between sessions (and lunch breaks) on a compressed intraday axis."""
        if not (self.compressed and self.intraday) or len(self.expected) < 2:
            return []
        after = np.flatnonzero(np.diff(self.expected) > self.step)
        return [float(self.left + (i + 1) * self.slot) for i in after]

    def holes(self, stored: np.ndarray) -> list[tuple[float, float, int, int, int]]:
        """(x0, x1, missing bars, first missing, last missing) per run of expected bars not stored."""
        if self.expected is None or not len(self.expected):
            return []
        missing = ~np.isin(self.expected, np.asarray(stored, dtype="int64"))
        if not missing.any():
            return []
        edges = np.diff(np.concatenate([[0], missing.astype("int8"), [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
        runs = []
        for i0, i1 in zip(starts, ends, strict=True):
            first, last = int(self.expected[i0]), int(self.expected[i1])
            if self.compressed:
                x0, x1 = self.left + i0 * self.slot, self.left + (i1 + 1) * self.slot
            else:
                x0, x1 = self.band(first, last + self.step)
            runs.append((float(x0), float(x1), int(i1 - i0 + 1), first, last))
        return runs


def build_axis(calendar: str | None, timeframe: str, lo: int, hi: int, left: float, right: float,
               alignment: str = BarAlignment.CLOCK, closures: Closures = NO_CLOSURES) -> Axis:
    """The axis of the window [lo, hi) (ns) for a series on ``calendar`` (None: unknown)."""
    step = timeframe_ns(timeframe)
    hi = max(hi, lo + step)
    expected = None
    if calendar is not None and (hi - lo) // step <= MAX_EXPECTED:
        try:
            validate_calendar_code(calendar)
            expected = expected_ns(calendar, timeframe, lo, hi, alignment, closures)
        except ValueError:  # a calendar code stored before the rules, or a window it cannot build
            expected = None
    compressed = expected is not None and len(expected) > 0 and calendar != CRYPTO_CALENDAR
    return Axis(lo, hi, step, left, right, expected, compressed, timeframe != "1d")
