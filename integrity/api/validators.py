"""Checks shared by the instrument serializer (API) and the instrument form (admin)."""

from __future__ import annotations

import importlib
from typing import Any

from ..providers import PROVIDER_NAMES, ProviderConfigError


def validate_provider_options(provider: str, options: Any, symbol: str = "") -> None:
    """Raise ``ValueError`` naming the problem when ``options`` do not suit ``provider``.

    A provider module may define ``validate_options(options, symbol)`` (the HTTP providers check
    option names and values there); providers without it accept any JSON object.
    """
    if provider not in PROVIDER_NAMES:
        return  # the provider field reports that
    if not isinstance(options, dict):
        raise ValueError("provider_options must be a JSON object")
    check = getattr(importlib.import_module(f"integrity.providers.{provider}"), "validate_options", None)
    if check is None:
        return
    try:
        check(options, symbol)
    except ProviderConfigError as exc:
        raise ValueError(str(exc)) from None


def validate_reference(provider: str, options: Any, symbol: str = "") -> None:
    """A reference source (``Instrument.reference_provider`` / ``reference_options``): no options
    without a provider; otherwise the same rules as the primary's options (``validate_provider_options``)."""
    if not provider:
        if options:
            raise ValueError("reference_options need a reference_provider")
        return
    validate_provider_options(provider, options, symbol)
