"""Axis ticks: "nice" price ticks (steps of 1, 2 or 5 times a power of ten, labels at the precision the
step needs) and UTC time ticks whose step follows the span shown (minutes, hours, days, weeks,
months, years).

Time ticks are chosen on positions, not on times, so the same code serves a linear time axis and a
session-compressed one (``axis.py``): a candidate tick time is placed where the axis puts it (on a
compressed axis, at the first expected bar at or after it), candidates that land on the same spot or
on no bar are dropped, and the smallest step whose ticks fit the width wins.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from ..timeframes import NS_PER_DAY, NS_PER_SECOND

# --- price ticks ---------------------------------------------------------------------------------


def nice_step(span: float, target: int = 5) -> float:
    """The 1-2-5 step giving about ``target`` intervals over ``span`` (> 0)."""
    raw = span / max(target, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * magnitude >= raw * 0.999999:
            return m * magnitude
    return 10 * magnitude


def step_decimals(step: float) -> int:
    """Decimals a label needs to tell ticks ``step`` apart (0 for steps of 1 and more)."""
    return max(0, -math.floor(math.log10(step) + 1e-9))


def format_price(value: float, decimals: int) -> str:
    text = f"{value:,.{decimals}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.,") else text  # no "-0.00"


def price_ticks(lo: float, hi: float, target: int = 5) -> tuple[list[float], list[str]]:
    """Tick values in [lo, hi] on a 1-2-5 step and their labels (thousands separated, as many
    decimals as the step needs)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [], []
    step = nice_step(hi - lo, target)
    if math.floor(hi / step + 1e-9) - math.ceil(lo / step - 1e-9) < 3:  # fewer than 4 ticks: a finer step
        step = nice_step(hi - lo, target * 2)
    decimals = step_decimals(step)
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    values = [round(k * step, decimals + 2) for k in range(first, last + 1)]
    return values, [format_price(v, decimals) for v in values]


# --- time ticks ----------------------------------------------------------------------------------

_MINUTE, _HOUR = 60 * NS_PER_SECOND, 3600 * NS_PER_SECOND
_MONDAY_OFFSET = 4 * NS_PER_DAY  # 1970-01-01 was a Thursday: Mondays are 4 days off the epoch grid


@dataclass(frozen=True)
class TimeStep:
    name: str
    ns: int  # fixed length; 0 for calendar months
    months: int = 0

    @property
    def intraday(self) -> bool:
        return 0 < self.ns < NS_PER_DAY

    @property
    def length(self) -> int:
        """Roughly how long a step is (months taken as 30.4 days)."""
        return self.ns or int(self.months * 30.4 * NS_PER_DAY)


TIME_STEPS = (
    *(TimeStep(f"{m}min", m * _MINUTE) for m in (1, 5, 15, 30)),
    *(TimeStep(f"{h}h", h * _HOUR) for h in (1, 2, 3, 6, 12)),
    TimeStep("1d", NS_PER_DAY), TimeStep("2d", 2 * NS_PER_DAY), TimeStep("1w", 7 * NS_PER_DAY),
    *(TimeStep(f"{m}mo", 0, m) for m in (1, 3, 6, 12)),
)


def _candidates(step: TimeStep, lo: int, hi: int) -> np.ndarray:
    """Tick times of ``step`` in [lo, hi) (ns, UTC): multiples of the step, Mondays, month starts."""
    if step.months:
        first = datetime.fromtimestamp(lo // NS_PER_SECOND, UTC)
        year, month = first.year, first.month
        month = ((month - 1) // step.months) * step.months + 1
        out = []
        while True:
            t = int(datetime(year, month, 1, tzinfo=UTC).timestamp()) * NS_PER_SECOND
            if t >= hi:
                return np.array(out, dtype="int64")
            if t >= lo:
                out.append(t)
            month += step.months
            year, month = year + (month - 1) // 12, (month - 1) % 12 + 1
    offset = _MONDAY_OFFSET if step.ns == 7 * NS_PER_DAY else 0
    first = -(-(lo - offset) // step.ns) * step.ns + offset
    return np.arange(first, hi, step.ns, dtype="int64")


@dataclass(frozen=True)
class TimeTick:
    x: float
    ts: int  # ns, the time the tick stands for (on a compressed axis: the bar there)
    label: str
    sublabel: str  # the date or year when it changes from the previous tick ("" otherwise)


def _labels(step: TimeStep, times: list[int]) -> list[tuple[str, str]]:
    out, previous = [], None
    for t in times:
        d = datetime.fromtimestamp(t / NS_PER_SECOND, UTC)
        if step.intraday:
            main, context = d.strftime("%H:%M"), d.strftime("%a %Y-%m-%d")
            key = d.date()
        elif step.months:
            main, context = (d.strftime("%b") if step.months < 12 else d.strftime("%Y")), d.strftime("%Y")
            key = d.year
        else:
            main, context = d.strftime("%a %m-%d"), d.strftime("%Y")
            key = d.year
        out.append((main, context if key != previous and not (step.months >= 12) else ""))
        previous = key
    return out


def time_ticks(lo: int, hi: int, place: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
               width: float, min_gap: float = 70.0) -> list[TimeTick]:
    """Ticks for the span [lo, hi) (ns) on an axis ``width`` px wide.

    ``place(times)`` returns, for candidate tick times, their x positions and the times actually shown
    there (NaN x: nowhere on the axis). The smallest step of ``TIME_STEPS`` whose ticks keep at least
    ``min_gap`` px apart (after dropping candidates that land on the same spot) is used."""
    if hi <= lo:
        return []
    limit = max(int(width // min_gap), 2)
    for step in TIME_STEPS:
        if (hi - lo) / step.length > 40 * limit:
            continue  # far too many candidates: skip without building them
        xs, shown = place(_candidates(step, lo, hi))
        keep = ~np.isnan(xs)
        xs, shown = xs[keep], shown[keep]
        if len(xs) > 1:
            xs, first = np.unique(np.round(xs, 1), return_index=True)
            shown = shown[first]
        if len(xs) > limit + 1:
            continue
        chosen_x, chosen_t, last = [], [], -math.inf
        for x, t in zip(xs, shown, strict=True):
            if x - last >= min_gap:
                chosen_x.append(float(x))
                chosen_t.append(int(t))
                last = x
        if len(chosen_x) * 2 < len(xs):
            continue  # too uneven at this step (a compressed axis bunches them): try a coarser one
        if step.intraday and len({t // NS_PER_DAY for t in chosen_t}) == len(chosen_t) > 1:
            continue  # one tick a day (a session's first bar): a day step says it better
        return [TimeTick(x, t, main, sub)
                for x, t, (main, sub) in zip(chosen_x, chosen_t, _labels(step, chosen_t), strict=True)]
    return []
