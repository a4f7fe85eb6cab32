"""Helpers shared by tests: registering instruments and reading back stored candles."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd

from integrity.models import Candle, Instrument


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def add_instrument(symbol="BTC-USD", asset_class="crypto", calendar="24/7", timeframes=("1h",),
                   provider="synthetic", **provider_options) -> Instrument:
    return Instrument.objects.create(
        symbol=symbol, asset_class=asset_class, calendar=calendar, timeframes=list(timeframes),
        provider=provider, provider_options=provider_options,
    )


def stored_bars(symbol: str, timeframe: str) -> pd.DataFrame:
    rows = list(
        Candle.objects.filter(symbol=symbol, timeframe=timeframe)
        .order_by("ts", "id")
        .values_list("ts", "open", "high", "low", "close", "volume")
    )
    frame = pd.DataFrame(rows, columns=["ts", "open", "high", "low", "close", "volume"])
    if frame.empty:
        frame["ts"] = pd.Series(dtype="datetime64[ns, UTC]")
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).astype("datetime64[ns, UTC]")
    return frame.reset_index(drop=True)


def assert_same_bars(stored: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Exactly the provider's bars: same timestamps, same values, nothing lost, nothing doubled."""
    expected = expected.reset_index(drop=True)[["ts", "open", "high", "low", "close", "volume"]]
    assert len(stored) == len(expected), f"{len(stored)} stored vs {len(expected)} expected"
    assert stored["ts"].is_unique, "duplicate bars stored"
    pd.testing.assert_frame_equal(stored, expected, check_exact=True, check_dtype=False)


def record_http_sleeps(monkeypatch) -> list[float]:
    """Make the HTTP client record the sleeps it asks for instead of sleeping (jitter fixed at 0.5)."""
    from integrity.providers.http import HttpClient

    calls: list[float] = []
    monkeypatch.setattr(HttpClient, "sleep", staticmethod(calls.append))
    monkeypatch.setattr(HttpClient, "jitter", staticmethod(lambda: 0.5))
    return calls


def use_default_thresholds(settings) -> None:
    """Start from the built-in quality thresholds, whatever the environment configures."""
    from integrity.quality.thresholds import DEFAULT_THRESHOLDS

    settings.QUALITY_THRESHOLDS = {}
    settings.STALE_THRESHOLD_HOURS = DEFAULT_THRESHOLDS["stale_hours"]
    settings.OUTLIER_MOVE_THRESHOLD = DEFAULT_THRESHOLDS["outlier_move"]


def worker_database_url() -> str:
    """DATABASE_URL for a worker process (manage.py backfill, qcluster) sharing this test's database.

    SQLite tests use a file (settings), so a separate process sees the same rows as on PostgreSQL.
    """
    from urllib.parse import quote

    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = quote(db["USER"] or "") + (f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else "")
    return f"postgres://{user}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
