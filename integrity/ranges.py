"""What range one backfill request may ask for: one rule set for the API, the admin, the CLI and the
service (``integrity.backfill`` checks it again before it claims or runs anything).

An explicit range ``[start, end)`` is refused, with the rule in the message, when:

- ``start`` is before 1970-01-01 UTC (the epoch our bar arithmetic counts from), or before the
  earliest bar of the provider when its module declares one (``EARLIEST_BAR``, an aware datetime);
- ``start`` is in the future, or ``end`` is after the end of the bar in progress (nothing later
  can exist; a request up to the bar in progress is capped at the last completed bar by the run);
- ``start`` is not before ``end``;
- it spans more bars than one request may ask for: ``(end - start) / bar length`` (end: now when
  not given) above ``BACKFILL_MAX_BARS[timeframe]`` (env ``BACKFILL_MAX_BARS``, per timeframe
  ``BACKFILL_MAX_BARS_1M`` …). The count is of calendar slots, not trading bars, so it is an upper
  bound of what the run writes, and cheap to compute at the door.

A start or end left out is planned by the service (incremental run, lookback, a file's first bar).
"""

from __future__ import annotations

import importlib
import math
from datetime import datetime

from django.utils import timezone

from .conf import conf
from .timeframes import EPOCH, aware, floor_to_timeframe, iso, timeframe_delta

EARLIEST_START = EPOCH


class RangeError(ValueError):
    """A range one request may not ask for. ``field`` is the offending bound (``start``/``end``,
    or None for the pair); ``rule`` a stable code (before_earliest, in_future, empty_range,
    too_many_bars)."""

    def __init__(self, message: str, *, field: str | None, rule: str):
        super().__init__(message)
        self.field = field
        self.rule = rule


def max_bars(timeframe: str) -> int:
    return conf.BACKFILL_MAX_BARS[timeframe]


def provider_earliest(provider: str | None) -> datetime | None:
    """The earliest bar a provider can have (its module's ``EARLIEST_BAR``), or None."""
    if not provider:
        return None
    try:
        module = importlib.import_module(f"integrity.providers.{provider}")
    except ImportError:
        return None  # an unknown provider is reported by whoever resolves it
    return getattr(module, "EARLIEST_BAR", None)


def check_backfill_range(timeframe: str | None, start: datetime | None, end: datetime | None, *,
                         provider: str | None = None, now: datetime | None = None) -> None:
    """Raise ``RangeError`` naming the rule when ``[start, end)`` may not be requested.

    ``timeframe`` None (not known yet) skips the rules that need a bar length.
    """
    now = now or timezone.now()
    start = None if start is None else aware(start)
    end = None if end is None else aware(end)
    earliest, whose = EARLIEST_START, "the earliest start a backfill may ask for"
    provider_first = provider_earliest(provider)
    if provider_first is not None and provider_first > earliest:
        earliest, whose = provider_first, f"the earliest bar provider {provider} has"
    step = timeframe_delta(timeframe) if timeframe else None
    # The bar in progress may be named as the end; the run caps it at the last completed bar.
    latest_end = floor_to_timeframe(now, timeframe) + step if step else now

    if start is not None:
        if start < earliest:
            raise RangeError(f"start {iso(start)} is before {iso(earliest)}, {whose}",
                             field="start", rule="before_earliest")
        if start > now:
            raise RangeError(f"start {iso(start)} is in the future (now is {iso(now)})",
                             field="start", rule="in_future")
    if end is not None:
        if end <= earliest:
            raise RangeError(f"end {iso(end)} is not after {iso(earliest)}, {whose}",
                             field="end", rule="before_earliest")
        if end > latest_end:
            bound = f"the end of the {timeframe} bar in progress, {iso(latest_end)}" if step else iso(now)
            raise RangeError(f"end {iso(end)} is in the future: at most {bound}",
                             field="end", rule="in_future")
    if start is not None and end is not None and start >= end:
        raise RangeError(f"empty range: end {iso(end)} must be after start {iso(start)}", field="end",
                         rule="empty_range")
    if start is not None and step is not None:
        span_end = end if end is not None else latest_end
        bars = math.ceil((span_end - start) / step)
        limit = max_bars(timeframe)
        if bars > limit:
            raise RangeError(
                f"the range {iso(start)} to {iso(span_end)} spans {bars:,} {timeframe} bars, more than one "
                f"backfill may ask for ({limit:,}, setting BACKFILL_MAX_BARS_{timeframe.upper()}): request a "
                f"shorter range, or several",
                field=None, rule="too_many_bars")
