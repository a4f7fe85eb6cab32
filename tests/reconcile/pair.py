"""A Binance-format primary (``tests.exchanges.FakeBinance``) and a Coinbase-format reference read
through ccxt (``FakeCoinbase``) on one local server, with errors planted on either side.

Both serve the same prices, each bar scaled by a factor that is never the same for two bars within
``MAX_SHIFT_HOURS`` of each other, so a bar shifted by whole hours cannot pass for its neighbour."""

from __future__ import annotations

from dataclasses import dataclass, field

from integrity.backfill import run_backfill
from integrity.models import Instrument
from tests.exchanges import FakeBinance, FakeCoinbase, serve_binance, serve_coinbase
from tests.helpers import add_instrument, utc

HOUR = 3600
START, END = utc(2024, 1, 1), utc(2024, 1, 5)  # 96 hourly bars
SERVED_FROM = utc(2023, 12, 31)  # the reference serves the window's padding too


def hour(n: int) -> int:
    """The epoch second of the window's bar ``n`` (0 … 95)."""
    return int(START.timestamp()) + n * HOUR


def factor(t: int) -> float:
    return 1 + ((t // HOUR) * 37 % 101) / 500


@dataclass
class Plant:
    """What to plant in the stored (Binance) series, by bar number, and in the reference."""

    price: dict[int, float] = field(default_factory=dict)  # close × this (high/low widened to fit)
    missing_stored: set[int] = field(default_factory=set)
    missing_reference: set[int] = field(default_factory=set)
    ratio: tuple[range, float] | None = None  # every price × the ratio over the bars
    shift: range | None = None  # these stored bars carry the bar one hour earlier

    def stored(self, klines: list[list]) -> list[list]:
        out = []
        for kline in klines:
            t = kline[0] // 1000
            n = (t - hour(0)) // HOUR
            if n in self.missing_stored:
                continue
            source = t - HOUR if self.shift is not None and n in self.shift else t
            prices = [float(v) * factor(source) for v in _base(source)]  # open, high, low, close
            if self.ratio is not None and n in self.ratio[0]:
                prices = [p * self.ratio[1] for p in prices]
            if n in self.price:
                o, h, lo, c = prices
                c *= self.price[n]
                prices = [o, max(h, c), min(lo, c), c]
            out.append([kline[0], *(repr(p) for p in prices), *kline[5:]])
        return out

    def reference(self, rows: list[list]) -> list[list]:
        out = []
        for t, low, high, open_, close, volume in rows:
            if (t - hour(0)) // HOUR in self.missing_reference and (t - hour(0)) % HOUR == 0:
                continue
            f = factor(t)
            out.append([t, low * f, high * f, open_ * f, close * f, volume])
        return out


def _base(t: int) -> list[str]:
    """The unscaled open, high, low, close of the bar opening at ``t`` (Binance's strings)."""
    from tests.exchanges import kline

    return kline(t * 1000, HOUR * 1000)[1:5]


def serve_pair(httpserver, plant: Plant | None = None) -> None:
    plant = plant or Plant()
    serve_binance(httpserver, FakeBinance(first=START, edit=plant.stored))
    serve_coinbase(httpserver, FakeCoinbase(first=SERVED_FROM, edit=plant.reference))


def btc_with_reference(**fields) -> Instrument:
    instrument = add_instrument("BTC-USD", provider="binance")
    values = {"reference_provider": "ccxt", "reference_options": {"exchange": "coinbaseexchange"}, **fields}
    Instrument.objects.filter(pk=instrument.pk).update(**values)
    instrument.refresh_from_db()
    return instrument


def stored_pair(httpserver, plant: Plant | None = None, **fields) -> Instrument:
    """The pair served, the instrument registered and its stored series back-filled from Binance."""
    serve_pair(httpserver, plant)
    instrument = btc_with_reference(**fields)
    result = run_backfill("BTC-USD", "1h", start=START, end=END)
    assert result.ok, result.error
    return instrument
