"""Recording closures: the rules a closure must meet (the admin, the API and ``manage.py closures``
apply the same ones), adding and removing them, and the presets.

A closure is extra closed time of one instrument, [start, end) UTC (the table and its loader:
``integrity.models.closures``; how it removes expected bars: ``integrity.calendars.closures``).
Recording or removing one changes which bars the instrument's series expect, not its candles, so
the series are sent back to be re-read from the closure's start (``quality.plan.rescan_from``): the
next scan, incremental or full, judges them again and auto-resolves the gaps the closure explains
("no longer detected").

Preset ``forex-holidays``: Christmas (25 December) and New Year's Day (1 January) of each year, for
every forex instrument (asset class forex or calendar 24/5). Each closure is the whole forex trading
day: from 17:00 New York the evening before to 17:00 New York that day (22:00 UTC in winter), the
same day the 24/5 calendar's daily bar stands for, so both the daily bar and the 24 hourly bars of
that day stop being expected. A holiday on a Saturday or Sunday is skipped (no trading day to close).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np
from django.db import transaction
from django.db.models import Q

from .calendars import FOREX_CALENDAR
from .calendars.intervals import forex_day_closes
from .models import AssetClass, Instrument, InstrumentClosure
from .quality.plan import rescan_from
from .timeframes import NS_PER_DAY, ns_to_datetime, to_ns

# A closure longer than this is refused: a typo (a year for a day) would silently hide real gaps.
# A longer shutdown is recorded as consecutive closures.
MAX_CLOSURE = timedelta(days=31)
PRESETS = ("forex-holidays",)
FOREX_HOLIDAYS = ((12, 25, "Christmas Day"), (1, 1, "New Year's Day"))


class ClosureError(ValueError):
    """A closure that breaks the rules; ``errors`` maps each field to its message."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors.items()))


def closure_errors(symbol: str | None, start: datetime | None, end: datetime | None) -> dict[str, str]:
    """What is wrong with this closure, per field (empty: it may be recorded)."""
    errors: dict[str, str] = {}
    if not symbol:
        errors["symbol"] = "a symbol is required"
    elif not Instrument.objects.filter(symbol=symbol).exists():
        errors["symbol"] = f"unknown instrument {symbol!r}: closures belong to instruments on the watchlist"
    for name, value in (("start", start), ("end", end)):
        if value is None:
            errors[name] = f"{name} is required"
        elif value.tzinfo is None:
            errors[name] = f"{name} must carry a time zone (UTC), e.g. 2024-12-24T22:00:00Z"
    if "start" not in errors and "end" not in errors:
        if end <= start:
            errors["end"] = "end must be after start (a closure is [start, end))"
        elif end - start > MAX_CLOSURE:
            errors["end"] = (f"a closure may last at most {MAX_CLOSURE.days} days; record a longer shutdown "
                             f"as consecutive closures")
    return errors


def check_closure(symbol: str | None, start: datetime | None, end: datetime | None) -> None:
    errors = closure_errors(symbol, start, end)
    if errors:
        raise ClosureError(errors)


def closures_changed(symbol: str, start: datetime) -> None:
    """After a closure of ``symbol`` starting at ``start`` was recorded, edited or removed."""
    rescan_from(symbol, start)


def add_closure(symbol: str, start: datetime, end: datetime, reason: str = "",
                by: str = "") -> tuple[InstrumentClosure, bool]:
    """Record a closure (checked by ``closure_errors``); (the closure, whether it is new). The same
    (symbol, start, end) recorded twice is one closure."""
    check_closure(symbol, start, end)
    with transaction.atomic():
        closure, created = InstrumentClosure.objects.get_or_create(
            symbol=symbol, start=start, end=end, defaults={"reason": reason, "created_by": by})
    if created:
        closures_changed(symbol, start)
    return closure, created


def change_closure(closure: InstrumentClosure, symbol: str, start: datetime, end: datetime,
                   reason: str) -> InstrumentClosure:
    """Edit a closure (checked like a new one); both the old and the new closed time are re-judged."""
    check_closure(symbol, start, end)
    before = (closure.symbol, closure.start)
    closure.symbol, closure.start, closure.end, closure.reason = symbol, start, end, reason
    with transaction.atomic():
        closure.save()
    closures_changed(*before)
    closures_changed(symbol, start)
    return closure


def remove_closure(closure: InstrumentClosure) -> None:
    symbol, start = closure.symbol, closure.start
    closure.delete()
    closures_changed(symbol, start)


@dataclass(frozen=True)
class PresetClosure:
    symbol: str
    start: datetime
    end: datetime
    reason: str


def forex_trading_day(day: date) -> tuple[datetime, datetime]:
    """The forex trading day ``day`` as [17:00 New York the day before, 17:00 New York), UTC."""
    label = np.array([to_ns(datetime(day.year, day.month, day.day))], dtype="int64")
    start, end = forex_day_closes(label - NS_PER_DAY)[0], forex_day_closes(label)[0]
    return ns_to_datetime(int(start)), ns_to_datetime(int(end))


def forex_instruments() -> list[str]:
    return list(Instrument.objects.filter(Q(asset_class=AssetClass.FOREX) | Q(calendar=FOREX_CALENDAR))
                .order_by("symbol").values_list("symbol", flat=True))


def preset_closures(preset: str, years: Iterable[int], symbols: Iterable[str] | None = None) -> list[PresetClosure]:
    """The closures a preset stands for (``symbols``: restrict it to these; default: its instruments)."""
    if preset not in PRESETS:
        raise ClosureError({"preset": f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}"})
    targets = forex_instruments()
    if symbols is not None:
        wanted = set(symbols)
        unknown = sorted(wanted - set(targets))
        if unknown:
            raise ClosureError({"symbol": f"not a forex instrument on the watchlist: {', '.join(unknown)}"})
        targets = [s for s in targets if s in wanted]
    days = []
    for year in sorted(set(years)):
        for month, day_of_month, name in FOREX_HOLIDAYS:
            day = date(year, month, day_of_month)
            if day.weekday() < 5:
                days.append((day, f"{name} {year} (forex-holidays)"))
    found = []
    for symbol in targets:
        for day, reason in days:
            start, end = forex_trading_day(day)
            found.append(PresetClosure(symbol, start, end, reason))
    return found


def add_preset(preset: str, years: Iterable[int], symbols: Iterable[str] | None = None,
               by: str = "") -> tuple[int, int]:
    """Record a preset's closures; (recorded, already there)."""
    created = existing = 0
    for item in preset_closures(preset, years, symbols):
        _, new = add_closure(item.symbol, item.start, item.end, item.reason, by)
        created, existing = created + new, existing + (not new)
    return created, existing
