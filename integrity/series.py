"""The series: an active instrument × each of its timeframes, the unit everything is judged on.

This module owns three things, so that they exist once:

* ``watchlist()`` / ``active_series()`` — the watchlist's instruments and their series (each
  timeframe of an instrument once, in the instrument's order), with the calendar, asset class, bar
  alignment and threshold overrides the judges need.
* the newest bar per series: ``newest_bars()`` for every active series (and its stale-alert state),
  ``newest_bars_of()`` for any given series — one statement, one index probe per series, never a
  scan of the candles.
* the instrument rules (``check_symbol``, ``check_timeframes``, ``instrument_rule_errors``): what a
  symbol looks like and that a timeframe is listed once. The API serializer, the admin form and the
  backfill CLI all call them, so none of them accepts what another refuses.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import Max

from .models import Candle, Instrument, SeriesStats
from .timeframes import Timeframe, aware

IN_CHUNK = 500  # symbols or ids per IN (...) list
# SQLite: series per statement (2 parameters each, well below the 999 of old SQLite builds).
_PAIRS_CHUNK = 200


# --- instrument rules ----------------------------------------------------------------------------

SYMBOL_RULE = "a symbol has no '/' and no whitespace (e.g. BTC-USD, EURUSD, AAPL)"
TIMEFRAMES_ONCE_RULE = "each timeframe once"


class InstrumentRuleError(ValueError):
    """An instrument breaks a rule; ``field`` names the attribute, the message states the rule."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def check_symbol(symbol: Any) -> None:
    if not isinstance(symbol, str) or not symbol or "/" in symbol or any(ch.isspace() for ch in symbol):
        raise InstrumentRuleError("symbol", SYMBOL_RULE)


def check_timeframes(timeframes: Any) -> None:
    if not isinstance(timeframes, list) or any(t not in Timeframe.values for t in timeframes):
        raise InstrumentRuleError("timeframes", f"a list of timeframes among {', '.join(Timeframe.values)}")
    if len(set(timeframes)) != len(timeframes):
        raise InstrumentRuleError("timeframes", TIMEFRAMES_ONCE_RULE)


def instrument_rule_errors(symbol: Any, timeframes: Any) -> dict[str, str]:
    """Every rule ``symbol`` and ``timeframes`` break, as {field: message} (empty: none)."""
    errors = {}
    for check, value in ((check_symbol, symbol), (check_timeframes, timeframes)):
        try:
            check(value)
        except InstrumentRuleError as exc:
            errors[exc.field] = str(exc)
    return errors


# --- the active series ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    symbol: str
    timeframe: str
    calendar: str
    asset_class: str
    bar_alignment: str
    availability_delay_minutes: int | None = None  # the instrument's own (None: its asset class's)


def _listed(timeframes: Any) -> Iterable[str]:
    """An instrument's timeframes, each once (rows written before the rules may repeat one)."""
    return dict.fromkeys(timeframes if isinstance(timeframes, list) else [])


def series_of(instrument: Instrument) -> list[Series]:
    """The series of one instrument (active or not), timeframes in its order."""
    return [Series(instrument.symbol, tf, instrument.calendar, instrument.asset_class, instrument.bar_alignment,
                   instrument.availability_delay_minutes)
            for tf in _listed(instrument.timeframes)]


def active_instruments():
    """The watchlist: the active instruments, by symbol."""
    return Instrument.objects.filter(active=True).order_by("symbol")


@dataclass(frozen=True)
class WatchedInstrument:
    """An instrument as the judges see it: its listed timeframes (each once) and its own thresholds."""

    symbol: str
    calendar: str
    asset_class: str
    bar_alignment: str
    timeframes: tuple[str, ...]
    quality_thresholds: Any = field(default=None, compare=False)
    availability_delay_minutes: int | None = None  # the instrument's own (None: its asset class's)

    def series(self, timeframe: str) -> Series:
        return Series(self.symbol, timeframe, self.calendar, self.asset_class, self.bar_alignment,
                      self.availability_delay_minutes)


def watchlist(symbols: Sequence[str] | None = None, *, inactive_too: bool = False) -> list[WatchedInstrument]:
    """The active instruments (one query), by symbol. ``symbols`` narrows the list to those
    instruments; ``inactive_too`` keeps the named ones even when inactive."""
    instruments = Instrument.objects.order_by("symbol") if inactive_too else active_instruments()
    if symbols is not None:
        instruments = instruments.filter(symbol__in=list(symbols))
    rows = instruments.values_list("symbol", "calendar", "asset_class", "bar_alignment", "timeframes",
                                   "quality_thresholds", "availability_delay_minutes")
    return [WatchedInstrument(symbol, calendar, asset_class, alignment, tuple(_listed(timeframes)), overrides, delay)
            for symbol, calendar, asset_class, alignment, timeframes, overrides, delay in rows]


def active_series(symbols: Sequence[str] | None = None) -> list[Series]:
    """Every active instrument × its timeframes, by symbol, timeframes in the instrument's order.

    ``symbols`` narrows the list to those instruments (still only active ones).
    """
    return [instrument.series(tf) for instrument in watchlist(symbols) for tf in instrument.timeframes]


# --- the newest bar per series -------------------------------------------------------------------


@dataclass
class NewestBar:
    """An active series, its newest stored bar (None: never loaded), its stale-alert state and what
    the staleness judgement needs about its instrument."""

    symbol: str
    timeframe: str
    calendar: str
    bar_alignment: str
    last_bar: datetime | None
    stats_id: int | None = None
    stale_alert_sent_at: datetime | None = None
    asset_class: str = ""
    availability_delay_minutes: int | None = None  # the instrument's own (None: its asset class's)


def chunks(items: Sequence, size: int = IN_CHUNK) -> Iterable[Sequence]:
    """``items`` in slices of ``size``: IN (...) lists and VALUES batches under the parameter limits."""
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _newest_ts(symbol: str, timeframe: str) -> str:
    """The newest stored bar of the series (``symbol``, ``timeframe``): answered from the
    (symbol, timeframe, ts) index with one backward probe (PostgreSQL's and SQLite's min/max
    optimisation), whatever the series' length."""
    return f"(SELECT max(c.ts) FROM {Candle._meta.db_table} c WHERE c.symbol = {symbol} AND c.timeframe = {timeframe})"


_NEWEST_BARS_SQL = {
    # One statement for the whole watchlist. The correlated max(ts) is answered from the
    # (symbol, timeframe, ts) index with one backward probe per series (PostgreSQL's and SQLite's
    # min/max optimisation), so the cost grows with the number of series, not with their history
    # — a plain GROUP BY over candles reads every row (see bench/bench_health.py). The LEFT JOIN
    # brings the stale-alert state along. On PostgreSQL the timeframes are matched by containment
    # against the known list rather than unnested: the planner then estimates the row count well
    # (set-returning functions are assumed to return 100 rows, which made it JIT-compile the plan).
    "postgresql": """
        SELECT i.symbol, tf.value, i.calendar,
               """ + _newest_ts("i.symbol", "tf.value") + """,
               ss.id, ss.stale_alert_sent_at, i.bar_alignment, i.asset_class, i.availability_delay_minutes
        FROM {instruments} i
        JOIN (VALUES {timeframes}) AS tf(value) ON i.timeframes @> jsonb_build_array(tf.value)
        LEFT JOIN {stats} ss ON ss.symbol = i.symbol AND ss.timeframe = tf.value
        WHERE i.active
    """,
    "sqlite": """
        SELECT i.symbol, tf.value, i.calendar,
               """ + _newest_ts("i.symbol", "tf.value") + """,
               ss.id, ss.stale_alert_sent_at, i.bar_alignment, i.asset_class, i.availability_delay_minutes
        FROM {instruments} i
        JOIN json_each(CASE WHEN json_type(i.timeframes) = 'array' THEN i.timeframes ELSE '[]' END) AS tf
        LEFT JOIN {stats} ss ON ss.symbol = i.symbol AND ss.timeframe = tf.value
        WHERE i.active AND tf.value IN (SELECT column1 FROM (VALUES {timeframes}))
    """,
}


def newest_bars() -> list[NewestBar]:
    """Every active series with its newest stored bar and its stale-alert state, in one query,
    sorted by (symbol, timeframe)."""
    sql = _NEWEST_BARS_SQL.get(connection.vendor)
    if sql is None:
        return newest_bars_orm()
    sql = sql.format(instruments=Instrument._meta.db_table,
                     stats=SeriesStats._meta.db_table,
                     timeframes=", ".join(f"('{tf}')" for tf in Timeframe.values))  # fixed choices, not input
    seen: set[tuple[str, str]] = set()
    series = []
    with connection.cursor() as cursor:
        cursor.execute(sql)
        for symbol, tf, calendar, last, stats_id, alerted, alignment, asset_class, delay in cursor.fetchall():
            if (symbol, tf) in seen:  # a timeframe listed twice on an instrument stored before the rules
                continue
            seen.add((symbol, tf))
            series.append(NewestBar(symbol, tf, calendar, alignment, aware(last), stats_id, aware(alerted),
                                    asset_class, delay))
    series.sort(key=lambda s: (s.symbol, s.timeframe))
    return series


def newest_bars_of(pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], datetime | None]:
    """The newest stored bar of each given (symbol, timeframe) series, active or not (None: none),
    in one statement (PostgreSQL; chunks on SQLite): one index probe per series."""
    newest: dict[tuple[str, str], datetime | None] = dict.fromkeys(pairs)
    keys = list(newest)
    if not keys:
        return newest
    probe = _newest_ts("p.symbol", "p.timeframe")
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"SELECT p.symbol, p.timeframe, {probe} FROM unnest(%s::text[], %s::text[]) "
                           "AS p(symbol, timeframe)", [[k[0] for k in keys], [k[1] for k in keys]])
            rows = cursor.fetchall()
        else:
            rows = []
            for chunk in chunks(keys, _PAIRS_CHUNK):
                values = ", ".join(["(%s, %s)"] * len(chunk))
                cursor.execute(f"WITH p(symbol, timeframe) AS (VALUES {values}) "
                               f"SELECT p.symbol, p.timeframe, {probe} FROM p", [v for k in chunk for v in k])
                rows.extend(cursor.fetchall())
    for symbol, timeframe, last in rows:
        newest[(symbol, timeframe)] = aware(last)
    return newest


def newest_bars_orm() -> list[NewestBar]:
    """Portable fallback of ``newest_bars``: one GROUP BY over the watchlist's candles."""
    watched = active_series()
    symbols = sorted({s.symbol for s in watched})
    last = {}
    stats = {}
    for chunk in chunks(symbols, IN_CHUNK):
        for row in (Candle.objects.filter(symbol__in=chunk).values("symbol", "timeframe")
                    .annotate(last=Max("ts")).order_by()):
            last[(row["symbol"], row["timeframe"])] = row["last"]
        for row in SeriesStats.objects.filter(symbol__in=chunk).values_list(
                "symbol", "timeframe", "id", "stale_alert_sent_at"):
            stats[(row[0], row[1])] = (row[2], row[3])
    series = []
    for s in watched:
        stats_id, alerted = stats.get((s.symbol, s.timeframe), (None, None))
        series.append(NewestBar(s.symbol, s.timeframe, s.calendar, s.bar_alignment,
                                last.get((s.symbol, s.timeframe)), stats_id, alerted,
                                s.asset_class, s.availability_delay_minutes))
    series.sort(key=lambda s: (s.symbol, s.timeframe))
    return series
