"""Market-data providers. ``get_provider(name)`` returns a provider instance by its registry name."""

from __future__ import annotations

from .base import BAR_COLUMNS, FetchRequest, Provider, ProviderConfigError, ProviderError, redact

__all__ = ["BAR_COLUMNS", "FetchRequest", "Provider", "ProviderConfigError", "ProviderError",
           "get_provider", "PROVIDER_NAMES", "redact"]

PROVIDER_NAMES = ("synthetic", "csv", "binance", "alpaca", "ccxt")


def check_bar_alignment(name: str, alignment: str) -> None:
    """An instrument's bar alignment must be what its provider delivers, where the provider says.

    HTTP providers declare ``bar_alignment`` (their bars sit on the clock grid); files (csv) and the
    synthetic generator follow the instrument.
    """
    try:
        delivers = getattr(get_provider(name), "bar_alignment", None)
    except ProviderError:
        return  # an unknown or misconfigured provider is reported by its own check
    if delivers is not None and alignment != delivers:
        raise ValueError(f"provider {name} delivers {delivers}-aligned bars; bar_alignment {alignment!r} "
                         f"would make every bar off-calendar")


def get_provider(name: str, **options) -> Provider:
    if name == "synthetic":
        from .synthetic import SyntheticProvider

        return SyntheticProvider(**options)
    if name == "csv":
        from .csv import CsvProvider

        return CsvProvider(**options)
    if name == "binance":
        from .binance import BinanceProvider

        return BinanceProvider(**options)
    if name == "alpaca":
        from .alpaca import AlpacaProvider

        return AlpacaProvider(**options)
    if name == "ccxt":
        from .ccxt import CcxtProvider

        return CcxtProvider(**options)
    raise ProviderConfigError(
        f"unknown provider {name!r}; expected one of {', '.join(PROVIDER_NAMES)}"
    )
