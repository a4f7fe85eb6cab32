"""Local servers that answer like exchanges, shared by the provider tests and the reconciliation
tests: Binance's ``/api/v3/klines`` (``FakeBinance``) and Coinbase Exchange's REST API as ccxt's
``coinbaseexchange`` reads it (``FakeCoinbase``), both on pytest-httpserver's server (their paths
differ, so one server can be both). The fixtures in ``tests.conftest`` (``local_binance``,
``local_coinbase``) point the operator's settings at it.

Both derive a bar from its open time with the same formula, so the two sources agree on every
price (their volumes differ, as two venues' do)."""

from __future__ import annotations

import json
import re

import pandas as pd
from werkzeug import Request, Response

from integrity.timeframes import timeframe_seconds
from tests.helpers import utc

START = utc(2024, 1, 1)  # the first bar both fakes serve unless told otherwise
KLINES = "/api/v3/klines"
CANDLES = re.compile(r"^/products/(?P<product>[^/]+)/candles$")
COINBASE_URL_SETTING = "CCXT_COINBASEEXCHANGE_API_URL"


# --- Binance -------------------------------------------------------------------------------------


def kline(open_ms: int, step_ms: int) -> list:
    """A deterministic, valid kline in Binance's format (numbers as strings)."""
    i = open_ms // step_ms
    o = 42_000 + (i % 97) * 3.5
    c = o + ((i % 7) - 3) * 1.25
    h, low = max(o, c) + 10.5, min(o, c) - 9.25
    return [open_ms, f"{o:.2f}", f"{h:.2f}", f"{low:.2f}", f"{c:.2f}", f"{12.5 + i % 11:.5f}",
            open_ms + step_ms - 1, "1000.0", 42, "6.0", "250.0", "0"]


def frame_of(klines: list[list]) -> pd.DataFrame:
    return pd.DataFrame({
        "ts": pd.to_datetime([k[0] for k in klines], unit="ms", utc=True).astype("datetime64[ns, UTC]"),
        **{name: [float(k[j]) for k in klines] for j, name in enumerate(["open", "high", "low", "close", "volume"],
                                                                         start=1)},
    })


class FakeBinance:
    """Serves klines from ``first`` to ``last`` (open times, inclusive) as Binance does."""

    def __init__(self, first=START, last=None, weight: int | None = None, edit=None):
        self.first_ms = int(pd.Timestamp(first).value // 1_000_000)
        self.last_ms = int(pd.Timestamp(last).value // 1_000_000) if last is not None else None
        self.weight = weight
        self.edit = edit  # callable(list of klines) -> list, to corrupt a page
        self.queries: list[dict] = []

    def klines(self, start_ms: int, end_ms: int, step_ms: int, limit: int) -> list[list]:
        first = max(start_ms, self.first_ms)
        first = -(-first // step_ms) * step_ms
        last = end_ms if self.last_ms is None else min(end_ms, self.last_ms)
        return [kline(t, step_ms) for t in range(first, last + 1, step_ms)][:limit]

    def __call__(self, request: Request) -> Response:
        args = request.args
        self.queries.append(dict(args))
        step_ms = timeframe_seconds(args["interval"]) * 1000
        rows = self.klines(int(args["startTime"]), int(args["endTime"]), step_ms, int(args.get("limit", 500)))
        if self.edit is not None:
            rows = self.edit(rows)
        headers = {"X-MBX-USED-WEIGHT-1M": str(self.weight)} if self.weight is not None else {}
        return Response(json.dumps(rows), content_type="application/json", headers=headers)


def serve_binance(httpserver, fake: FakeBinance) -> FakeBinance:
    httpserver.expect_request(KLINES, method="GET").respond_with_handler(fake)
    return fake


# --- Coinbase Exchange (through ccxt) ----------------------------------------------------------


def candle(t: int, step: int) -> list:
    """A deterministic, valid candle in Coinbase's order: [time, low, high, open, close, volume]."""
    i = t // step
    o = 42_000 + (i % 97) * 3.5
    c = o + ((i % 7) - 3) * 1.25
    return [t, min(o, c) - 9.25, max(o, c) + 10.5, o, c, 12.5 + (i % 11) * 0.125]


PRODUCTS = [
    {"id": product, "base_currency": product.split("-")[0], "quote_currency": product.split("-")[1],
     "quote_increment": "0.01", "base_increment": "0.00000001", "display_name": product.replace("-", "/"),
     "min_market_funds": "1", "margin_enabled": False, "post_only": False, "limit_only": False,
     "cancel_only": False, "trading_disabled": False, "status": "online", "status_message": "",
     "auction_mode": False}
    for product in ("BTC-USD", "ETH-USD")
]
CURRENCIES = [{"id": code, "name": code, "min_size": "0.00000001", "status": "online", "message": "",
               "max_precision": "0.00000001", "details": {"type": "crypto"}}
              for code in ("BTC", "ETH", "USD")]


class FakeCoinbase:
    """Coinbase Exchange's candles endpoint over bars from ``first`` on (inclusive ``start``/``end``)."""

    def __init__(self, first=START, last=None, edit=None, replies=()):
        self.first = int(first.timestamp())
        self.last = int(last.timestamp()) if last is not None else None
        self.edit = edit
        self.replies = list(replies)  # Responses for the first requests (an outage, a rate limit)
        self.queries: list[dict] = []

    def __call__(self, request: Request) -> Response:
        product = CANDLES.match(request.path).group("product")
        args = dict(request.args)
        self.queries.append({"product": product, **args})
        if self.replies:
            return self.replies.pop(0)
        if product not in {p["id"] for p in PRODUCTS}:
            return Response('{"message":"NotFound"}', status=404, content_type="application/json")
        step = int(args["granularity"])
        start = int(pd.Timestamp(args["start"]).timestamp())
        end = int(pd.Timestamp(args["end"]).timestamp())
        if (end - start) // step + 1 > 300:
            return Response('{"message":"granularity too small for the requested time range. Count of '
                            'aggregations requested exceeds 300"}', status=400, content_type="application/json")
        first = max(start, self.first)
        first = -(-first // step) * step
        last = end if self.last is None else min(end, self.last)
        rows = [candle(t, step) for t in range(first, last + 1, step)][::-1]  # newest first
        if self.edit is not None:
            rows = self.edit(rows)
        return Response(json.dumps(rows), content_type="application/json")

    def candle_queries(self) -> list[dict]:
        return [q for q in self.queries if q["product"] in {p["id"] for p in PRODUCTS}]


def serve_markets(httpserver) -> None:
    httpserver.expect_request("/products", method="GET").respond_with_json(PRODUCTS)
    httpserver.expect_request("/currencies", method="GET").respond_with_json(CURRENCIES)


def serve_coinbase(httpserver, fake: FakeCoinbase | None = None) -> FakeCoinbase:
    fake = fake or FakeCoinbase()
    serve_markets(httpserver)
    httpserver.expect_request(CANDLES, method="GET").respond_with_handler(fake)
    return fake
