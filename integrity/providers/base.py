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

import json
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import pandas as pd

from integrity.conf import conf

BAR_COLUMNS = ["ts", "open", "high", "low", "close", "volume"]
PRICE_COLUMNS = ["open", "high", "low", "close"]

# --- secrets and the one redaction ---------------------------------------------------------------

# The settings that hold provider credentials (read from Django settings, else the environment).
# Their values are removed from every error text, whoever builds it: see ``redact``.
CREDENTIAL_SETTINGS = ("ALPACA_API_KEY_ID", "ALPACA_API_SECRET_KEY")
EXCERPT_CHARS = 200  # the longest excerpt of a reply an error carries
REDACTED = "***"


def _spellings(secret: str) -> list[str]:
    """How a reply-derived text may spell ``secret``: as sent, JSON-escaped (a raw body) and
    repr-escaped (a decoded payload shown with ``repr``)."""
    backslashed = secret.replace("\\", "\\\\")
    return [secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1], backslashed,
            backslashed.replace("'", "\\'"), backslashed.replace('"', '\\"')]


def _secret_spellings(secrets: Iterable[str]) -> list[str]:
    values = {s for s in (*secrets, *(conf.credential(name) for name in CREDENTIAL_SETTINGS)) if s}
    spellings = {spelling for value in values for spelling in _spellings(value)}
    return sorted(spellings, key=len, reverse=True)  # longest first: no spelling is left half-replaced


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """The one redaction: ``text`` with every credential (``CREDENTIAL_SETTINGS``) and every extra
    secret replaced by ``***``, in any spelling a reply may echo it in.

    Every error text derived from a provider reply or a failed request passes through here
    (``ProviderError`` applies it to its whole message), so a reply that echoes the key headers
    cannot carry them into an execution's ``error_message``, failure tracking, a log line or a
    command's output. Redact *before* shortening a text: a cut secret no longer matches."""
    for spelling in _secret_spellings(secrets):
        text = text.replace(spelling, REDACTED)
    return text


def excerpt(value: Any, secrets: Iterable[str] = (), limit: int = EXCERPT_CHARS) -> str:
    """A short, redacted, single-line excerpt of a reply (a body, a payload, a value from it).

    A string is taken as it is, anything else as its ``repr``. The text is cut to a window first
    (a reply may be megabytes), and a secret the cut would split is dropped with the rest, so no
    prefix of a secret survives; then it is redacted and cut to ``limit``."""
    text = value if isinstance(value, str) else repr(value)
    spellings = _secret_spellings(secrets)
    window = limit * 2 + (len(spellings[0]) if spellings else 0)
    if len(text) > window:
        text = text[:window]
        for spelling in spellings:  # the window may end inside a secret: drop that partial secret
            for size in range(min(len(spelling), len(text)) - 1, 0, -1):
                if text.endswith(spelling[:size]):
                    text = text[:-size]
                    break
    return " ".join(redact(text, secrets).split())[:limit]


class ProviderError(Exception):
    """The source could not deliver usable bars. The message is safe to store and show: it is
    redacted (``redact``) whatever the caller put into it."""

    def __init__(self, message: str, *, provider: str = "", path: str = "", status: int | None = None,
                 body_excerpt: str = ""):
        self.provider = provider
        self.path = path
        self.status = status
        self.body_excerpt = excerpt(body_excerpt) if body_excerpt else ""
        parts = [message]
        if provider:
            parts.insert(0, f"[{provider}]")
        if path:
            parts.append(f"path={path}")
        if status is not None:
            parts.append(f"status={status}")
        if self.body_excerpt:
            parts.append(f"body={self.body_excerpt!r}")
        super().__init__(redact(" ".join(parts)))


class ProviderConfigError(ProviderError):
    """The provider is misconfigured (missing key, unknown symbol mapping, missing file)."""


@contextmanager
def reading_reply(provider: str, path: str) -> Iterator[None]:
    """Around the parsing of a reply: an exception the parser did not foresee (its text may quote
    the reply) becomes a ``ProviderError``, so it is redacted like every other reply-derived error."""
    try:
        yield
    except ProviderError:
        raise
    except Exception as exc:
        raise ProviderError(f"unusable reply ({exc.__class__.__name__}: {exc})", provider=provider,
                            path=path) from None


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


def reply_number(value: Any) -> float:
    """A price or volume as a reply spells it (a JSON number or a number string) as a float.

    None and a string that is no number become NaN, so validation rejects that bar alone
    (non_finite) and the rest of the page is kept; a number too large for a float becomes infinity.
    Any other type (a boolean, a list, an object) raises ``TypeError``: the reply itself is
    unusable, which the provider reports in its own words."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"{type(value).__name__} is not a number")
    try:
        return float(value)
    except ValueError:
        return math.nan
    except OverflowError:
        return math.inf
