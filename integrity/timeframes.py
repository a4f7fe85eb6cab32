"""The bar sizes the system maintains, arithmetic on bar open times, and the one owner of time
conversion and formatting: aware UTC datetimes, int64 nanoseconds since the epoch, pandas
timestamps, and the ISO text messages and JSON details use.

A bar's ``ts`` is its open time in UTC. Intraday bars are aligned to multiples of their length
since the Unix epoch (a 1h bar opens at hh:00, a 4h bar at 00/04/08/... UTC); a daily bar is
stamped with its session date at 00:00 UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from django.db import models
from django.utils import formats, timezone
from django.utils.dateparse import parse_datetime


class BarAlignment(models.TextChoices):
    """Where intraday bars start.

    ``clock``: on the epoch grid of the bar length (a 1h bar opens at hh:00 UTC), what Alpaca,
    Polygon and Binance deliver. ``session``: at each trading interval's open (a session, or the
    part of one after a lunch break), the last bar of the interval shortened to its close; what
    Interactive Brokers, Yahoo and many vendor files deliver (NYSE 1h bars at 09:30, 10:30 ... 15:30).
    Daily bars and 24/7 series are the same either way.
    """

    CLOCK = "clock", "clock grid"
    SESSION = "session", "session open"


class Timeframe(models.TextChoices):
    M1 = "1m", "1 minute"
    M5 = "5m", "5 minutes"
    M15 = "15m", "15 minutes"
    H1 = "1h", "1 hour"
    H4 = "4h", "4 hours"
    D1 = "1d", "1 day"


TIMEFRAME_DELTAS: dict[str, timedelta] = {
    "1m": timedelta(minutes=1),
    "5m": timedelta(minutes=5),
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "4h": timedelta(hours=4),
    "1d": timedelta(days=1),
}

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timeframe_delta(timeframe: str) -> timedelta:
    try:
        return TIMEFRAME_DELTAS[timeframe]
    except KeyError:
        raise ValueError(
            f"unknown timeframe {timeframe!r}; expected one of {', '.join(TIMEFRAME_DELTAS)}"
        ) from None


def timeframe_seconds(timeframe: str) -> int:
    return int(timeframe_delta(timeframe).total_seconds())


def floor_to_timeframe(ts: datetime, timeframe: str) -> datetime:
    """The open time of the bar that contains ``ts``."""
    step = timeframe_seconds(timeframe)
    seconds = int((ts - EPOCH).total_seconds())
    return EPOCH + timedelta(seconds=seconds - seconds % step)



# --- times as int64 nanoseconds since the epoch, and how they are written in messages ----------

NS_PER_SECOND = 1_000_000_000
NS_PER_HOUR = 3_600 * NS_PER_SECOND
NS_PER_DAY = 86_400 * NS_PER_SECOND


def timeframe_ns(timeframe: str) -> int:
    """A bar's length in nanoseconds (raises for an unknown timeframe, as ``timeframe_seconds``)."""
    return timeframe_seconds(timeframe) * NS_PER_SECOND


def aware(value) -> datetime | None:
    """An aware datetime: naive values (and SQLite's text, parsed) are taken as UTC; None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        value = parse_datetime(value)
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def utc_text(value) -> str:
    """An instant as every screen shows it, ``2026-03-02 14:00 UTC`` (``-`` for none): the
    ``DATETIME_FORMAT`` Django's own columns use, so a built string reads like a field."""
    if value is None:
        return "-"
    return formats.date_format(timezone.localtime(value), "DATETIME_FORMAT")


def utc_timestamp(value) -> pd.Timestamp:
    """A datetime-like as a UTC pandas Timestamp in ns; naive values are taken as UTC."""
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)
    return stamp.as_unit("ns")


def to_ns(value) -> int:
    """A datetime-like as int64 ns since the epoch (UTC); naive values are taken as UTC."""
    if pd.Timestamp(value) is pd.NaT:
        raise ValueError("a time is required, got NaT/None")
    return int(utc_timestamp(value).value)


def ns_to_datetime(value: int) -> datetime:
    """An int ns time as an aware UTC datetime (stored times have microsecond resolution)."""
    return EPOCH + timedelta(microseconds=int(value) // 1000)


def ns_index(values: np.ndarray) -> pd.DatetimeIndex:
    """Int64 ns times as a UTC DatetimeIndex."""
    return pd.DatetimeIndex(np.asarray(values, dtype="int64").view("M8[ns]")).tz_localize(UTC)


def iso(value: datetime | int | None) -> str | None:
    """ISO 8601 text of a datetime or an int ns time (None stays None): the form JSON details use."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        value = ns_to_datetime(value)
    return value.isoformat()


def bar_label(ns: int, timeframe: str) -> str:
    """A bar time as a message shows it: a date for a midnight daily bar, else UTC to the minute
    (to the second when it has seconds)."""
    ts = ns_to_datetime(ns)
    if timeframe == "1d" and ts.hour == ts.minute == ts.second == ts.microsecond == 0:
        return ts.strftime("%Y-%m-%d")
    if ts.second or ts.microsecond:
        return ts.strftime("%Y-%m-%d %H:%M:%S UTC")
    return ts.strftime("%Y-%m-%d %H:%M UTC")


def bar_span(first: int, last: int, timeframe: str) -> str:
    """"at <bar>" for one bar time, "from <first> to <last>" for several."""
    if first == last:
        return f"at {bar_label(first, timeframe)}"
    return f"from {bar_label(first, timeframe)} to {bar_label(last, timeframe)}"
