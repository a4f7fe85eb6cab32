"""Which bars an instrument's calendar expects, so gaps and off-calendar bars can be told apart.

The public API of the calendar layer; each part has one owner module:
    * ``codes``: calendar codes (exchange_calendars codes and aliases, "24/7" crypto, "24/5" the
      forex week), their validation and each asset class's default;
    * ``intervals``: trading intervals in int64 ns (exchange sessions split at lunch breaks, the
      forex week) and the cached exchange_calendars builds behind them;
    * ``bars``: expected-bar maths (clock grid or session-anchored), bar opens from closes, the
      newest completed bar;
    * ``closures``: an instrument's extra closed time (holidays, outages) as ns intervals, which
      every expected-bar function here takes as ``closures`` (normalised by ``normalise_closures``);
    * ``counting``: counts and first/last expected bars of spans too long to materialise (its
      ``DENSE_LIMIT`` is read there, so patch it there).
"""

from .bars import (
    bar_opens_from_closes,
    expected_bars,
    expected_ns,
    is_expected_bar,
    last_completed_bar,
    previous_expected_bar,
    session_anchored,
    validate_alignment,
)
from .closures import NO_CLOSURES, Closures
from .closures import normalise as normalise_closures
from .codes import (
    ASSET_CLASS_CALENDARS,
    CRYPTO_CALENDAR,
    FOREX_CALENDAR,
    OWN_CALENDARS,
    calendar_choices,
    calendar_for_asset_class,
    is_known_calendar,
    validate_calendar_code,
)
from .counting import bars_per_day, count_expected_bars, expected_stats

__all__ = [
    "ASSET_CLASS_CALENDARS",
    "NO_CLOSURES",
    "Closures",
    "CRYPTO_CALENDAR",
    "FOREX_CALENDAR",
    "OWN_CALENDARS",
    "bar_opens_from_closes",
    "bars_per_day",
    "calendar_choices",
    "calendar_for_asset_class",
    "count_expected_bars",
    "expected_bars",
    "expected_ns",
    "expected_stats",
    "is_expected_bar",
    "is_known_calendar",
    "last_completed_bar",
    "normalise_closures",
    "previous_expected_bar",
    "session_anchored",
    "validate_alignment",
    "validate_calendar_code",
]
