"""Calendar codes: which codes are known, how they are validated, and each asset class's default.

Codes are any exchange_calendars code or alias ("XNYS", "NYSE", "XLON", ...), ``"24/7"`` (crypto)
and ``"24/5"`` (the forex week). exchange_calendars ships an unrelated calendar named "24/5"; ours
always wins and is never passed to exchange_calendars.
"""

from __future__ import annotations

CRYPTO_CALENDAR = "24/7"
FOREX_CALENDAR = "24/5"
OWN_CALENDARS = (CRYPTO_CALENDAR, FOREX_CALENDAR)

ASSET_CLASS_CALENDARS = {"equity": "XNYS", "crypto": CRYPTO_CALENDAR, "forex": FOREX_CALENDAR}


def _exchange_calendar_names() -> set[str]:
    import exchange_calendars as xcals

    return set(xcals.get_calendar_names(include_aliases=True)) - set(OWN_CALENDARS)


def is_known_calendar(code: str) -> bool:
    if not isinstance(code, str) or not code:
        return False
    return code in OWN_CALENDARS or code in _exchange_calendar_names()


def validate_calendar_code(code: str) -> None:
    if not is_known_calendar(code):
        raise ValueError(
            f"unknown calendar {code!r}: use an exchange_calendars code such as XNYS, XLON, XTKS "
            f"(aliases like NYSE and LSE work too), '24/7' for crypto or '24/5' for the forex week "
            f"(Sunday 17:00 to Friday 17:00 New York time)"
        )


OWN_CALENDAR_LABELS = {CRYPTO_CALENDAR: "24/7 — every day, all day (crypto)",
                       FOREX_CALENDAR: "24/5 — the forex week, Sunday 17:00 to Friday 17:00 New York"}


def calendar_choices() -> list[tuple[str, list[tuple[str, str]]]]:
    """Every known code as grouped form choices: ours, the exchange_calendars codes, their aliases
    (each naming the calendar it stands for)."""
    import exchange_calendars as xcals

    codes = sorted(set(xcals.get_calendar_names(include_aliases=False)) - set(OWN_CALENDARS))
    aliases = sorted(_exchange_calendar_names() - set(codes))
    return [
        ("Around the clock", list(OWN_CALENDAR_LABELS.items())),
        ("Exchanges", [(code, code) for code in codes]),
        ("Aliases", [(alias, f"{alias} (= {xcals.resolve_alias(alias)})") for alias in aliases]),
    ]


def calendar_for_asset_class(asset_class: str) -> str:
    """The default calendar of an asset class: equity XNYS, crypto 24/7, forex 24/5."""
    try:
        return ASSET_CLASS_CALENDARS[str(asset_class).lower()]
    except KeyError:
        raise ValueError(
            f"no default calendar for asset class {asset_class!r}; expected one of "
            f"{', '.join(ASSET_CLASS_CALENDARS)}"
        ) from None
