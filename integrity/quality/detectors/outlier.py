"""outlier: moves beyond the threshold and bad ticks caught by the series' own volatility.

Severity: critical for a unit error (price ratio near 100 or 1000, or their inverses); high for a
move beyond outlier_move (splits and reverting spikes included); medium for a smaller spike caught
by the volatility test.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

from ...models import Severity
from ...timeframes import bar_label, iso
from .. import window
from ..enrichment import series_volatilities
from ..findings import Finding
from .scan import OUTLIER, Scan, Series, json_number


def _near(value: float, target: float, tolerance: float) -> bool:
    return target > 0 and abs(value / target - 1.0) <= tolerance


def _named_ratio(ratios: Sequence[float], th: dict) -> tuple[str, str, float] | None:
    """('unit_error' | 'split', description, ratio) when a price ratio is a telling one."""
    tol = float(th["outlier_ratio_tolerance"])
    for ratio in ratios:
        if not (ratio > 0 and math.isfinite(ratio)):
            continue
        for factor in th["outlier_unit_factors"]:
            if _near(ratio, factor, tol) or _near(ratio, 1.0 / factor, tol):
                return "unit_error", f"possible {factor:g}× unit error", ratio
    for ratio in ratios:
        if not (ratio > 0 and math.isfinite(ratio)):
            continue
        for k in th["outlier_split_ratios"]:
            if _near(ratio, 1.0 / k, tol):
                return "split", f"possible {k:g}:1 split", ratio
            if _near(ratio, k, tol):
                return "split", f"possible 1:{k:g} reverse split", ratio
    return None


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%"


class _Volatility:
    """Robust volatility per series: series_stats when known, else computed from its newest closes
    (``enrichment.series_volatilities``, the estimate series_stats holds), for all the series that
    need one in a single query (``prefetch``)."""

    def __init__(self) -> None:
        self._cache: dict[int, float | None] = {}

    @staticmethod
    def _known(s: Series) -> float | None:
        sigma = s.ctx.robust_volatility
        return sigma if sigma is not None and sigma > 0 and math.isfinite(sigma) else None

    def prefetch(self, series: Sequence[Series]) -> None:
        todo = [s for s in series if s.idx not in self._cache and self._known(s) is None]
        by_sample: dict[int, list[Series]] = defaultdict(list)
        for s in todo:
            by_sample[int(s.th["outlier_vol_sample"])].append(s)
        for sample, group in by_sample.items():
            found = series_volatilities([(s.symbol, s.timeframe) for s in group], sample)
            for s in group:
                n, sigma = found.get((s.symbol, s.timeframe), (0, 0.0))
                usable = n >= max(2, int(s.th["outlier_min_bars"])) and sigma > 0 and math.isfinite(sigma)
                self._cache[s.idx] = sigma if usable else None

    def __call__(self, s: Series) -> float | None:
        known = self._known(s)
        if known is not None:
            return known
        if s.idx not in self._cache:
            self.prefetch([s])
        return self._cache[s.idx]


def _needs_volatility(s: Series, row: window.WindowRow) -> bool:
    """Whether judging the row may need the series' volatility (a small move that reverts)."""
    pc, c, nc = row.pc, row.close, row.nc
    if pc is None or nc is None or not (pc > 0 and c > 0) or c == pc:
        return False
    th = s.th
    return (abs(c - pc) <= float(th["outlier_move"]) * pc
            and abs(c / pc - 1.0) > float(th["outlier_vol_min_move"])
            and abs(nc - pc) <= float(th["outlier_revert_tolerance"]) * abs(c - pc))


def _judge_move(s: Series, row: window.WindowRow, volatility: _Volatility) -> tuple[str, str, dict] | None:
    """Severity, description and details of an outlier bar, or None if it is not one."""
    th = s.th
    pc, o, c, nc = row.pc, row.open, row.close, row.nc
    if pc is None or not (pc > 0 and math.isfinite(pc)) or not (c > 0 and math.isfinite(c)):
        return None
    move = float(th["outlier_move"])
    r_close, r_open = c / pc, o / pc if (o > 0 and math.isfinite(o)) else float("nan")
    big_close = abs(c - pc) > move * pc
    big_open = math.isfinite(r_open) and abs(o - pc) > move * pc
    reverts = (nc is not None and math.isfinite(nc) and c != pc
               and abs(nc - pc) <= float(th["outlier_revert_tolerance"]) * abs(c - pc))
    details = {"previous_close": json_number(pc), "open": json_number(o), "close": json_number(c), "next_close": json_number(nc),
               "close_change": r_close - 1.0, "open_change": None if math.isnan(r_open) else r_open - 1.0,
               "reverts": bool(reverts), "threshold": move}
    vol_spike = False
    if reverts and not big_close and abs(r_close - 1.0) > float(th["outlier_vol_min_move"]):
        sigma = volatility(s)
        if sigma:
            z = abs(math.log(r_close)) / sigma
            details.update(sigma=sigma, z=round(z, 2))
            vol_spike = z > float(th["outlier_robust_z"])
    if not (big_close or big_open or vol_spike):
        return None

    named = _named_ratio([r for r in (r_open, r_close) if math.isfinite(r)], th)
    if named and named[0] == "unit_error":
        cause, label, ratio = named
        text = f"{label}: price ×{ratio:.4g} vs previous close"
        if reverts:
            text += ", back the next bar (spike that reverts, likely bad tick)"
        details.update(cause=cause, ratio=ratio)
        return Severity.CRITICAL, text, details
    if reverts and (big_close or vol_spike):
        details["cause"] = "bad_tick"
        text = (f"spike that reverts (likely bad tick): close {_pct(r_close - 1.0)} vs previous close, "
                f"next close back within {abs(nc / pc - 1.0) * 100:.2f}%")
        if vol_spike and not big_close:
            text += f" ({details['z']:.0f} sigma)"
            return Severity.MEDIUM, text, details
        return Severity.HIGH, text, details
    if named:
        cause, label, ratio = named
        details.update(cause=cause, ratio=ratio)
        return Severity.HIGH, f"{label}: price ×{ratio:.4g} vs previous close (unadjusted history?)", details
    details["cause"] = "move"
    which = []
    if big_close:
        which.append(f"close {_pct(r_close - 1.0)}")
    if big_open:
        which.append(f"open {_pct(r_open - 1.0)}")
    return Severity.HIGH, f"{' and '.join(which)} vs previous close (threshold {move:.0%})", details


def findings(scan: Scan) -> list[Finding]:
    scan.window()
    volatility = _Volatility()
    volatility.prefetch([s for s in scan.series if any(_needs_volatility(s, row) for row in s.rows)])
    found = []
    for s in scan.series:
        explained: int | None = None  # ts of a reverting spike: the next bar's move is its reversal
        for row in s.rows:
            # Non-positive or non-finite prices are invalid_ohlc's business (_judge_move skips them).
            if row.pc is None or row.is_dup or not s.at_or_after_since(row.ts):
                continue
            if explained is not None and row.pt == explained:
                explained = None
                continue
            judged = _judge_move(s, row, volatility)
            if judged is None:
                continue
            severity, text, details = judged
            if details.get("reverts"):
                explained = row.ts
            details["bar"] = iso(row.ts)
            found.append(s.finding(OUTLIER, severity, f"{bar_label(row.ts, s.timeframe)}: {text}", 1,
                                      row.ts, row.ts, iso(row.ts), details))
    return found
