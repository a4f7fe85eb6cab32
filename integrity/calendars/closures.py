"""Closures: extra closed time on top of a calendar (a forex Christmas, a one-off exchange outage),
as int64 ns half-open intervals [start, end), and how they remove expected bars.

A closure only *removes* expectations: the trading time of an instrument is its calendar's trading
intervals minus its closures, and a bar the base calendar expects stays expected when at least one
of its trading minutes is left open. So:

    * an intraday bar is dropped when every trading minute of it is closed (a 1h bar half inside an
      outage is still expected: the provider publishes it with the minutes that traded);
    * a daily bar is dropped when its whole session is closed (exchange: the session's trading time;
      24/5: the trading day, previous day 17:00 to 17:00 New York; 24/7: the UTC day).

``Closures`` values are normalised (``normalise``: sorted, empty ones dropped, overlapping or
touching ones merged) tuples, so they are hashable and group series that share them.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..timeframes import NS_PER_DAY

Closures = tuple[tuple[int, int], ...]
NO_CLOSURES: Closures = ()


def normalise(pairs: Iterable[tuple[int, int]] | None) -> Closures:
    """Sorted, merged [start, end) ns pairs (empty and inverted pairs dropped)."""
    merged: list[list[int]] = []
    for start, end in sorted((int(a), int(b)) for a, b in (pairs or ()) if int(b) > int(a)):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return tuple((a, b) for a, b in merged)


def relevant(closures: Closures, lo: int, hi: int, pad: int = 8 * NS_PER_DAY) -> Closures:
    """The closures that overlap [lo - pad, hi + pad) (daily spans reach back to the previous close)."""
    if not closures:
        return NO_CLOSURES
    return tuple((a, b) for a, b in closures if a < hi + pad and b > lo - pad)


def arrays(closures: Closures) -> tuple[np.ndarray, np.ndarray]:
    starts = np.array([a for a, _ in closures], dtype="int64")
    ends = np.array([b for _, b in closures], dtype="int64")
    return starts, ends


def subtract(iv_open: np.ndarray, iv_close: np.ndarray, closures: Closures) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, disjoint intervals [open, close) minus the closures: the time still open."""
    if not closures or len(iv_open) == 0:
        return iv_open, iv_close
    c_start, c_end = arrays(closures)
    points = np.unique(np.concatenate([iv_open, iv_close, c_start, c_end]))
    seg_lo, seg_hi = points[:-1], points[1:]
    idx = np.searchsorted(iv_open, seg_lo, side="right") - 1
    trading = (idx >= 0) & (iv_close[np.clip(idx, 0, None)] > seg_lo)
    cdx = np.searchsorted(c_start, seg_lo, side="right") - 1
    closed = (cdx >= 0) & (c_end[np.clip(cdx, 0, None)] > seg_lo)
    keep = trading & ~closed
    lo, hi = seg_lo[keep], seg_hi[keep]
    if len(lo) > 1:  # merge segments that touch
        starts = np.concatenate([[True], lo[1:] != hi[:-1]])
        ends = np.concatenate([lo[1:] != hi[:-1], [True]])
        lo, hi = lo[starts], hi[ends]
    return lo, hi


def meets(iv_open: np.ndarray, iv_close: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether each span [a, b) shares time with one of the sorted, disjoint intervals."""
    if len(iv_open) == 0:
        return np.zeros(len(a), dtype=bool)
    # The last interval opening before the span ends; if it closed before the span began, so did
    # every earlier one.
    idx = np.searchsorted(iv_open, b, side="left") - 1
    return (idx >= 0) & (iv_close[np.clip(idx, 0, None)] > a)


def closed_bar_count(closures: Closures, lo: int, hi: int, step: int) -> int:
    """Epoch-aligned bars [b, b + step) with lo <= b < hi lying wholly inside a closure (24/7 counts)."""
    total = 0
    for start, end in closures:
        first = -(-max(lo, start) // step) * step
        stop = min(hi, end - step + 1)  # bars opening before this end by the closure's end
        if stop > first:
            total += -(-(stop - first) // step)
    return total
