"""invalid_ohlc: stored rows breaking the OHLC rules of ``integrity.validation``, one finding per
series; severity high.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ...models import Severity
from ...timeframes import bar_span, iso
from ...validation import OHLC_RULE_CODES, ohlc_rule_masks
from .. import sql
from ..findings import Finding
from .scan import INVALID_OHLC, TABLE, Scan, json_number, plural

_INVALID_FETCH_LIMIT = 10_000  # rows per series whose values are read to name the broken rules


def _broken_rules(stored: list[tuple]) -> dict[int, list[str]]:
    """Row id -> the codes of the OHLC rules (``integrity.validation.OHLC_RULES``) the stored row
    breaks, for rows ``(id, ts, open, high, low, close, volume)``. A non-finite value is reported
    alone: the comparisons mean nothing then."""
    if not stored:
        return {}
    values = np.array([row[2:7] for row in stored], dtype="float64")  # a NULL would be NaN
    masks = ohlc_rule_masks(*values.T)
    return {
        int(row[0]): ["non_finite"] if masks["non_finite"][i]
        else [code for code in OHLC_RULE_CODES if masks[code][i]]
        for i, row in enumerate(stored)
    }


def findings(scan: Scan) -> list[Finding]:
    scan.window()
    per_series = {s.idx: [r for r in s.rows if r.bad and s.at_or_after_since(r.ts)] for s in scan.series}
    fetch = [r.id for rows in per_series.values() for r in rows[:_INVALID_FETCH_LIMIT]]
    stored_rows = sql.rows_by_id(TABLE, fetch) if fetch else []
    values = {r[0]: r for r in stored_rows}
    broken_by_id = _broken_rules(stored_rows)
    found = []
    for s in scan.series:
        rows = per_series[s.idx]
        if not rows:
            continue
        limit = int(s.th["sample_limit"])
        reasons: dict[str, int] = defaultdict(int)
        sample = []
        for row in rows[:_INVALID_FETCH_LIMIT]:
            stored = values.get(row.id)
            if stored is None:
                continue  # deleted since the window pass
            _, ts, o, h, lo, c, v = stored
            broken = broken_by_id[row.id]
            for reason in broken:
                reasons[reason] += 1
            if len(sample) < limit:
                sample.append({"id": row.id, "ts": iso(ts), "open": json_number(o), "high": json_number(h),
                               "low": json_number(lo), "close": json_number(c), "volume": json_number(v),
                               "reasons": broken})
        count = len(rows)
        summary = ", ".join(f"{k} ×{n}" for k, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
        first, last = rows[0].ts, rows[-1].ts
        found.append(s.finding(
            INVALID_OHLC, Severity.HIGH,
            f"{plural(count, s.timeframe, 'stored bar')} break OHLC rules {bar_span(first, last, s.timeframe)}"
            + (f" ({summary})" if summary else ""),
            count, first, last, "stored",
            {"rows": count, "reasons": dict(reasons), "sample": sample, "truncated": count > len(sample),
             "reasons_counted_over": min(count, _INVALID_FETCH_LIMIT)},
        ))
    return found
