"""Tiny helpers that read settings from the environment (12-factor, as healthchecks does)."""

from __future__ import annotations

import os
import re

from integrity.conf import SETTINGS


def envstr(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def envbool(name: str, default: str = "False") -> bool:
    value = os.environ.get(name, default).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"environment variable {name}={value!r} is not a boolean (use true/false)")


def envint(name: str, default: int, minimum: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None
    if minimum is not None and number < minimum:
        raise ValueError(f"environment variable {name}={value!r} must be at least {minimum}")
    return number


def envfloat(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not a number") from None


def envlist(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


_RATE = re.compile(r"^(\d+)/(s|sec|second|m|min|minute|h|hour|d|day)$")


def envrate(name: str, default: str) -> str | None:
    """A request rate such as ``60/min`` (per s, min, hour or day); ``off`` (or empty) means no limit."""
    value = os.environ.get(name, default).strip().lower()
    if value in ("", "off", "none"):
        return None
    if not _RATE.match(value):
        raise ValueError(f"environment variable {name}={value!r} is not a rate: use N/s, N/min, N/hour, "
                         "N/day (e.g. 60/min) or off")
    return value


_META_HEADER = re.compile(r"^HTTP_[A-Z0-9_]+$")


def envproxyheader(name: str) -> tuple[str, str] | None:
    """Django's ``SECURE_PROXY_SSL_HEADER`` from ``HTTP_X_FORWARDED_PROTO`` (the request.META name of
    the header the TLS proxy sets; the value it sets for HTTPS is ``https`` unless given as
    ``HTTP_X_FORWARDED_SSL=on``). Unset or empty: None (the proxy is not trusted)."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    header, _, expected = value.partition("=")
    header, expected = header.strip(), expected.strip() or "https"
    if not _META_HEADER.match(header):
        suggestion = "HTTP_" + re.sub(r"[^A-Z0-9]", "_", header.upper()).removeprefix("HTTP_")
        raise ValueError(f"environment variable {name}={value!r} is not a request.META header name: "
                         f"use the HTTP_ form, e.g. {suggestion} (optionally {suggestion}=https)")
    return header, expected


def envsetting(name: str, **options) -> bool | int | float | str | list[str]:
    """The environment variable ``name`` read in the type of the default ``integrity.conf`` declares for
    the setting of that name, that default when unset (so each default is written once, in conf)."""
    default = SETTINGS[name].default
    if isinstance(default, bool):
        return envbool(name, str(default))
    if isinstance(default, int):
        return envint(name, default, **options)
    if isinstance(default, float):
        return envfloat(name, default)
    if isinstance(default, list):
        return envlist(name, ",".join(default))
    if isinstance(default, str):
        return envstr(name, default)
    raise TypeError(f"setting {name}: its default {default!r} has no environment form; read it explicitly")
