"""The provider protocol: where candles come from.

A provider turns (symbol, timeframe, [start, end)) into a stream of pages. Each page is a pandas
DataFrame in the *bar frame* layout below, so validation and writing are vectorised and memory is
bounded by the page size, not by the range.

Bar frame layout (``BAR_COLUMNS``):
    ts      datetime64[ns, UTC]  bar open time
    open, high, low, close, volume   float64

Providers do not validate: they parse what the source said into that layout (raising
``ProviderError`` when the reply itself is unusable) and leave OHLC rules to ``validation``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import pandas as pd

BAR_COLUMNS = ["ts", "open", "high", "low", "close", "volume"]
PRICE_COLUMNS = ["open", "high", "low", "close"]


class ProviderError(Exception):
    """The source could not deliver usable bars. The message is safe to store and show."""

    def __init__(self, message: str, *, provider: str = "", path: str = "", status: int | None = None,
                 body_excerpt: str = ""):
        self.provider = provider
        self.path = path
        self.status = status
        self.body_excerpt = body_excerpt
        parts = [message]
        if provider:
            parts.insert(0, f"[{provider}]")
        if path:
            parts.append(f"path={path}")
        if status is not None:
            parts.append(f"status={status}")
        if body_excerpt:
            parts.append(f"body={body_excerpt[:200]!r}")
        super().__init__(" ".join(parts))


class ProviderConfigError(ProviderError):
    """The provider is misconfigured (missing key, unknown symbol mapping, missing file)."""


@dataclass
class FetchRequest:
    symbol: str
    timeframe: str
    start: datetime  # inclusive, UTC
    end: datetime  # exclusive, UTC
    calendar: str = "24/7"
    asset_class: str = "crypto"
    alignment: str = "clock"  # BarAlignment of the series: where intraday bars start
    options: dict[str, Any] = field(default_factory=dict)


class Provider(Protocol):
    name: str

    def fetch(self, request: FetchRequest) -> Iterator[pd.DataFrame]:
        """Yield pages of bars in ascending ``ts`` within [start, end), in the bar frame layout."""
        ...

    # Optional: ``first_bar_ts(request) -> datetime | None``, the earliest bar the source holds
    # for the series. A provider that knows it (a CSV file) lets a series with no stored bars start
    # there instead of at the configured lookback.


def empty_bar_frame() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in BAR_COLUMNS})
    frame["ts"] = pd.Series(dtype="datetime64[ns, UTC]")
    return frame[BAR_COLUMNS]


def make_bar_frame(ts, open_, high, low, close, volume) -> pd.DataFrame:
    """Build a bar frame from array-likes, coercing types to the layout."""
    return pd.DataFrame(
        {
            "ts": pd.to_datetime(ts, utc=True).astype("datetime64[ns, UTC]"),
            "open": pd.to_numeric(open_, errors="coerce").astype("float64"),
            "high": pd.to_numeric(high, errors="coerce").astype("float64"),
            "low": pd.to_numeric(low, errors="coerce").astype("float64"),
            "close": pd.to_numeric(close, errors="coerce").astype("float64"),
            "volume": pd.to_numeric(volume, errors="coerce").astype("float64"),
        },
        columns=BAR_COLUMNS,
    )
