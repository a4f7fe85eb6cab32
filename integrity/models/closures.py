"""The closures table (``instrument_closures``): extra closed time a user records for one
instrument (a forex Christmas, a one-off exchange outage), on top of its calendar, and the loader
every expected-bar judgement reads them with (``closures_by_symbol``: one query for many series).

A closure is a half-open UTC interval [start, end). Closures only remove expectations
(``integrity.calendars.closures``): no bar is expected where every trading minute is closed.
The rules for recording one (symbol on the watchlist, bounded length) are ``integrity.closures``'.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from django.db import models
from django.db.models import F, Q

from ..calendars import NO_CLOSURES, Closures, normalise_closures
from ..timeframes import to_ns


class InstrumentClosure(models.Model):
    symbol = models.CharField(max_length=50)
    start = models.DateTimeField(help_text="first closed instant (UTC, inclusive)")
    end = models.DateTimeField(help_text="end of the closure (UTC, exclusive)")
    reason = models.CharField(max_length=200, default="", blank=True)
    created_by = models.CharField(max_length=150, default="", blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "instrument_closures"
        ordering = ["symbol", "start"]
        constraints = [
            models.CheckConstraint(condition=Q(end__gt=F("start")), name="instrument_closure_end_after_start"),
            models.UniqueConstraint(fields=["symbol", "start", "end"], name="instrument_closure_unique"),
        ]
        indexes = [models.Index(fields=["symbol", "start"], name="instrument_closure_symbol")]

    def __str__(self) -> str:
        return f"{self.symbol} closed {self.start:%Y-%m-%d %H:%M} → {self.end:%Y-%m-%d %H:%M} UTC"


def closures_by_symbol(symbols: Iterable[str] | None = None) -> dict[str, Closures]:
    """The normalised closures (ns) of each symbol that has any (one query; None: every symbol)."""
    rows = InstrumentClosure.objects.order_by().values_list("symbol", "start", "end")
    if symbols is not None:
        wanted = set(symbols)
        if not wanted:
            return {}
        if len(wanted) <= 500:
            rows = rows.filter(symbol__in=wanted)
        rows = (row for row in rows if row[0] in wanted)
    pairs: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for symbol, start, end in rows:
        pairs[symbol].append((to_ns(start), to_ns(end)))
    return {symbol: normalise_closures(found) for symbol, found in pairs.items()}


def closures_for(symbol: str) -> Closures:
    """The normalised closures (ns) of one symbol (``NO_CLOSURES`` when it has none)."""
    return closures_by_symbol([symbol]).get(symbol, NO_CLOSURES)
