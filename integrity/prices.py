"""How a price reads: at its instrument's precision (``Instrument.price_decimals``), not the 13
decimals a float prints.

An instrument may set its number of decimals (a tick of 0.01 is 2); when it does not, the asset
class decides: equities 2 (4 under 1), forex 5 (3 from 20 up, the yen pairs), crypto and anything
else six significant digits with at least 2 decimals (67012.35, 3.45678, 0.0000123400). Values that
are not finite numbers (``nan``, ``inf`` as a rejected bar brought them) read as they came.
"""

from __future__ import annotations

import math
from typing import Any

from django.db.models import OuterRef, QuerySet, Subquery

MAX_DECIMALS = 12

# The keys of an anomaly's ``details`` that hold prices (the outlier and invalid-OHLC detectors').
PRICE_KEYS = frozenset({"open", "high", "low", "close", "previous_close", "next_close"})


def default_decimals(value: float, asset_class: str | None) -> int:
    """The decimals a price of ``asset_class`` shows when its instrument sets none."""
    magnitude = abs(value)
    if asset_class == "equity":
        return 2 if magnitude >= 1 else 4
    if asset_class == "forex":
        return 3 if magnitude >= 20 else 5
    if magnitude >= 1000 or magnitude == 0:
        return 2
    return min(MAX_DECIMALS, max(2, 5 - math.floor(math.log10(magnitude))))


def format_price(value: Any, decimals: int | None = None, asset_class: str | None = None) -> str:
    """``value`` at ``decimals`` (else the asset class default); ``-`` for none; anything that is
    not a finite number as it is."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return str(value)
    places = decimals if decimals is not None else default_decimals(float(value), asset_class)
    return f"{value:.{places}f}"


def format_volume(value: Any) -> str:
    """A volume as a person reads it: thousands separated, no trailing ``.0`` on whole amounts (share
    and contract counts), up to 8 decimals otherwise (crypto base-asset volume); ``-`` for none."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return str(value)
    if float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:,.8f}".rstrip("0").rstrip(".")


def prices_shown(value: Any, decimals: int | None = None, asset_class: str | None = None) -> Any:
    """``value`` (an anomaly's ``details``) with every number under a ``PRICE_KEYS`` key formatted as
    ``format_price`` does; everything else unchanged."""
    if isinstance(value, dict):
        return {key: format_price(item, decimals, asset_class)
                if key in PRICE_KEYS and isinstance(item, (int, float)) and not isinstance(item, bool)
                else prices_shown(item, decimals, asset_class)
                for key, item in value.items()}
    if isinstance(value, list):
        return [prices_shown(item, decimals, asset_class) for item in value]
    return value


def with_price_precision(queryset: QuerySet) -> QuerySet:
    """Rows of a table keyed by ``symbol`` (candles, rejected bars) with their instrument's
    ``price_decimals`` and ``asset_class`` (``instrument_decimals``, ``instrument_asset_class``): one
    indexed look-up per row shown, inside the page's own query."""
    from .models import Instrument  # the models import MAX_DECIMALS from here

    instrument = Instrument.objects.filter(symbol=OuterRef("symbol"))
    return queryset.annotate(instrument_decimals=Subquery(instrument.values("price_decimals")[:1]),
                             instrument_asset_class=Subquery(instrument.values("asset_class")[:1]))


def row_price(row, value) -> str:
    """``value`` of a row ``with_price_precision`` annotated, as ``format_price`` shows it."""
    return format_price(value, getattr(row, "instrument_decimals", None), getattr(row, "instrument_asset_class", None))
