"""OHLC rules applied to incoming bars, before anything is stored.

``validate_bars`` splits one page of bars (bar frame layout, see ``providers.base``) into the
bars that may be written and the bars that must not, each rejected bar carrying every reason
code that applies. All rules are vectorised: one boolean mask per rule, combined into a bit
mask per row, so a page of a million bars validates in a fraction of a second.

Reason codes:
    missing_ts            ts is missing (NaT); no other ts rule is applied to that bar
    non_finite            NaN or +/-inf in open, high, low, close or volume
    non_positive_price    open, high, low or close <= 0
    high_below_low        high < low
    high_below_open_close high < max(open, close)
    low_above_open_close  low > min(open, close)
    negative_volume       volume < 0
    misaligned_ts         ts is not a multiple of the bar length since the epoch (1d: not 00:00 UTC);
                          for a session-anchored intraday series (``alignment="session"``), ts is
                          not on a whole minute (where in the session a bar may start is the
                          calendar's judgement: the off_calendar detector, not ingest)
    future_ts             ts > now
    duplicate_ts          the ts occurs more than once in the page; every copy is rejected,
                          because nothing tells us which copy is right

NaN never passes silently: a comparison with NaN is false, so a bar with a NaN price may not
trip ``high_below_low``, but it always carries ``non_finite`` and is rejected for that.

Duplicates are detected within one page. Providers that page their output must not split a run
of equal timestamps across pages (the CSV provider guarantees this).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from integrity.providers.base import BAR_COLUMNS, PRICE_COLUMNS, empty_bar_frame
from integrity.timeframes import NS_PER_SECOND, BarAlignment, timeframe_ns, utc_timestamp

DEFAULT_EXAMPLE_LIMIT = 10


# --- the OHLC value rules: written once, applied to incoming bars and (as SQL) to stored rows -----


@dataclass(frozen=True)
class OhlcRule:
    """One rule on a bar's values.

    ``breaks(o, h, lo, c, v)``: where the rule is broken, over numpy float arrays. ``holds_sql``:
    the SQL condition under which a ``candles`` row aliased ``c`` keeps it, with ``{least}``,
    ``{greatest}`` and ``{inf}`` filled per database. The SQL conditions are written to be combined
    (``ohlc_sql_predicate``), so one may lean on another: with low <= min(open, close) and
    max(open, close) <= high, "low > 0" bounds every price and "high < inf" every price from above
    (PostgreSQL sorts NaN above infinity; SQLite cannot store NaN).
    """

    code: str
    breaks: Callable[..., np.ndarray]
    holds_sql: str


OHLC_RULES: tuple[OhlcRule, ...] = (
    OhlcRule("non_finite",
             lambda o, h, lo, c, v: ~(np.isfinite(o) & np.isfinite(h) & np.isfinite(lo) & np.isfinite(c)
                                      & np.isfinite(v)),
             "c.high < {inf} AND c.volume < {inf}"),
    OhlcRule("non_positive_price", lambda o, h, lo, c, v: (o <= 0) | (h <= 0) | (lo <= 0) | (c <= 0),
             "c.low > 0"),
    OhlcRule("high_below_low", lambda o, h, lo, c, v: h < lo, "c.low <= c.high"),
    OhlcRule("high_below_open_close", lambda o, h, lo, c, v: h < np.fmax(o, c),
             "{greatest}(c.open, c.close) <= c.high"),
    OhlcRule("low_above_open_close", lambda o, h, lo, c, v: lo > np.fmin(o, c),
             "c.low <= {least}(c.open, c.close)"),
    OhlcRule("negative_volume", lambda o, h, lo, c, v: v < 0, "c.volume >= 0"),
)
OHLC_RULE_CODES: tuple[str, ...] = tuple(rule.code for rule in OHLC_RULES)

# Every reason a bar can be rejected for, in the order they are reported.
REASON_CODES: tuple[str, ...] = (
    "missing_ts",
    *OHLC_RULE_CODES,
    "misaligned_ts",
    "future_ts",
    "duplicate_ts",
)

_SQL_FLAVOURS = {
    "postgresql": {"least": "least", "greatest": "greatest", "inf": "'Infinity'::float8",
                   "false": "IS NOT TRUE"},
    # SQLite cannot store NaN (it becomes NULL, refused by NOT NULL); 9e999 is +inf.
    "sqlite": {"least": "min", "greatest": "max", "inf": "9e999", "false": "IS NOT 1"},
}


def ohlc_rule_masks(o, h, lo, c, v) -> dict[str, np.ndarray]:
    """Rule code -> where the rule is broken, for float arrays of the five values (NaN breaks
    ``non_finite`` only: every comparison with it is false)."""
    values = [np.asarray(x, dtype="float64") for x in (o, h, lo, c, v)]
    with np.errstate(invalid="ignore"):
        return {rule.code: rule.breaks(*values) for rule in OHLC_RULES}


def ohlc_sql_predicate(vendor: str) -> str:
    """SQL true for a ``candles`` row aliased ``c`` that breaks any of ``OHLC_RULES`` (``vendor``:
    ``connection.vendor``, postgresql or sqlite)."""
    try:
        flavour = _SQL_FLAVOURS[vendor]
    except KeyError:
        raise ValueError(
            f"no OHLC rule SQL for database {vendor!r}; expected one of {', '.join(_SQL_FLAVOURS)}"
        ) from None
    holds = " AND ".join(rule.holds_sql.format(**flavour) for rule in OHLC_RULES)
    return f"({holds}) {flavour['false']}"

_TS_DTYPE = "datetime64[ns, UTC]"


@dataclass
class ValidationResult:
    valid: pd.DataFrame  # bar frame layout, valid rows only, sorted by ts, index reset
    invalid: pd.DataFrame  # bar frame columns + "reasons" (comma-joined codes), original order

    @property
    def valid_count(self) -> int:
        return len(self.valid)

    @property
    def invalid_count(self) -> int:
        return len(self.invalid)

    def reason_counts(self) -> dict[str, int]:
        """Reason code -> number of bars rejected for it (a bar with two reasons counts twice)."""
        if self.invalid.empty:
            return {}
        counts: dict[str, int] = {}
        # Few distinct combinations even for millions of rejected bars: count those, then split.
        for combo, n in self.invalid["reasons"].value_counts(sort=False).items():
            for code in str(combo).split(","):
                counts[code] = counts.get(code, 0) + int(n)
        return {code: counts[code] for code in REASON_CODES if code in counts}

    def examples(self, limit: int = DEFAULT_EXAMPLE_LIMIT) -> list[dict[str, Any]]:
        """The first ``limit`` rejected bars as JSON-serialisable dicts."""
        head = self.invalid.head(max(limit, 0))
        return [_example(row) for row in head.itertuples(index=False)]


def _json_float(value: float) -> float | str:
    value = float(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _example(row) -> dict[str, Any]:
    ts = row.ts
    return {
        "ts": None if pd.isna(ts) else ts.isoformat(),
        **{column: _json_float(getattr(row, column)) for column in BAR_COLUMNS[1:]},
        "reasons": str(row.reasons).split(","),
    }


def _coerce_bar_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame in exact bar frame layout (dtypes included), without touching the caller's copy."""
    missing = [c for c in BAR_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"bar frame is missing columns {missing}; got {list(frame.columns)}")
    ts = frame["ts"]
    if isinstance(ts.dtype, pd.DatetimeTZDtype):
        ts = ts.dt.tz_convert("UTC")
    else:
        ts = pd.to_datetime(ts, utc=True, errors="coerce")
    data = {"ts": ts.astype(_TS_DTYPE)}
    for column in BAR_COLUMNS[1:]:
        values = frame[column]
        if values.dtype != np.float64:
            values = pd.to_numeric(values, errors="coerce").astype("float64")
        data[column] = values
    return pd.DataFrame(data, columns=BAR_COLUMNS).reset_index(drop=True)


def _empty_invalid_frame() -> pd.DataFrame:
    frame = empty_bar_frame()
    frame["reasons"] = pd.Series(dtype="str")
    return frame


def validate_bars(frame: pd.DataFrame, timeframe: str, now: datetime | None = None,
                  alignment: str = BarAlignment.CLOCK) -> ValidationResult:
    """Split ``frame`` into valid bars and rejected bars with their reason codes."""
    step_ns = timeframe_ns(timeframe)  # also rejects an unknown timeframe
    if alignment == BarAlignment.SESSION and timeframe != "1d":
        step_ns = 60 * NS_PER_SECOND
    bars = _coerce_bar_frame(frame)
    if bars.empty:
        return ValidationResult(valid=empty_bar_frame(), invalid=_empty_invalid_frame())

    now_ns = utc_timestamp(now if now is not None else datetime.now(UTC)).value

    ts_ns = bars["ts"].array.asi8  # int64 ns since the epoch; NaT is the int64 minimum
    prices = bars[PRICE_COLUMNS].to_numpy(dtype="float64")
    o, h, lo, c = prices.T
    v = bars["volume"].to_numpy(dtype="float64")

    has_ts = ~bars["ts"].isna().to_numpy()
    # NaN compares false everywhere below; non_finite is what catches it.
    with np.errstate(invalid="ignore"):
        masks = {
            "missing_ts": ~has_ts,
            **ohlc_rule_masks(o, h, lo, c, v),
            "misaligned_ts": has_ts & (np.mod(ts_ns, step_ns) != 0),
            "future_ts": has_ts & (ts_ns > now_ns),
            "duplicate_ts": has_ts & pd.Series(ts_ns).duplicated(keep=False).to_numpy(),
        }

    # One bit per reason; the few distinct bit patterns are turned into strings once each.
    bits = np.zeros(len(bars), dtype=np.int64)
    for position, code in enumerate(REASON_CODES):
        bits |= masks[code].astype(np.int64) << position
    rejected = bits != 0

    valid = bars.loc[~rejected]
    if not valid["ts"].is_monotonic_increasing:
        valid = valid.sort_values("ts", kind="stable")
    valid = valid.reset_index(drop=True)

    invalid = bars.loc[rejected].reset_index(drop=True)
    if len(invalid):
        patterns = np.unique(bits[rejected])
        labels = {
            int(p): ",".join(code for i, code in enumerate(REASON_CODES) if p >> i & 1) for p in patterns
        }
        invalid["reasons"] = pd.Series(bits[rejected]).map(labels).astype("str")
    else:
        invalid = _empty_invalid_frame()
    return ValidationResult(valid=valid, invalid=invalid)


@dataclass
class ValidationSummary:
    """Validation outcomes merged over the pages of one backfill."""

    example_limit: int = DEFAULT_EXAMPLE_LIMIT
    valid_count: int = 0
    invalid_count: int = 0
    reason_counts: dict[str, int] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)

    def add(self, result: ValidationResult) -> ValidationSummary:
        self.valid_count += result.valid_count
        self.invalid_count += result.invalid_count
        for code, n in result.reason_counts().items():
            self.reason_counts[code] = self.reason_counts.get(code, 0) + n
        room = self.example_limit - len(self.examples)
        if room > 0 and result.invalid_count:
            self.examples.extend(result.examples(room))
        return self

    def as_dict(self) -> dict[str, Any]:
        return {
            "valid_count": self.valid_count,
            "invalid_count": self.invalid_count,
            "reason_counts": {code: self.reason_counts[code] for code in REASON_CODES
                              if code in self.reason_counts},
            "examples": list(self.examples),
        }
