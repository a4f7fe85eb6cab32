"""ccxt calls for the ``ccxt`` provider: retries and error mapping.

ccxt's network errors (``NetworkError`` and its subclasses ``RequestTimeout``, ``DDoSProtection``,
``RateLimitExceeded``, ``ExchangeNotAvailable``, ``OnMaintenance``) are retried with the HTTP
providers' policy and settings (``http_policy``: ``PROVIDER_HTTP_MAX_RETRIES``,
``PROVIDER_HTTP_BACKOFF_*``, ``Retry-After`` honoured up to ``PROVIDER_HTTP_RETRY_AFTER_MAX``;
the jitter and sleep of ``HttpClient`` themselves, so one test hook covers both). Exchange errors
are not retried: ``BadSymbol`` and ``NotSupported`` fail as ``ProviderConfigError``,
``AuthenticationError`` names the key settings, every other ``ExchangeError`` and an unusable reply
fail as ``ProviderError``. Error texts carry the URL *path* only (ccxt's own messages quote the
whole URL with host and query string). Retries log under the provider's logger
(``integrity.providers.ccxt``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from .base import ProviderConfigError, ProviderError, excerpt, redact
from .ccxt_exchange import CREDENTIALS, NAME, Venue, ccxt_library, setting_name
from .http import HttpClient
from .http_policy import HttpConfig, backoff_delay, parse_retry_after

logger = logging.getLogger("integrity.providers.ccxt")  # the provider's logger

ERROR_CHARS = 300  # the longest excerpt of a ccxt error text an error carries
_URL = re.compile(r"\bhttps?://[^\s'\"<>]+")


def _scrub(text: str, secrets: tuple[str, ...]) -> tuple[str, str]:
    """A ccxt error text with every URL cut to its path (no host, no query string), redacted and
    shortened; and the first URL's path."""
    paths: list[str] = []

    def to_path(match: re.Match) -> str:
        path = urlsplit(match.group(0)).path or "/"
        paths.append(path)
        return path

    return excerpt(_URL.sub(to_path, text), secrets, limit=ERROR_CHARS), (paths[0] if paths else "")


class Calls:
    """ccxt calls with the HTTP providers' retry policy; ccxt errors become ours."""

    def __init__(self, shared: Venue, exchange_id: str, config: HttpConfig):
        self.venue = shared
        self.exchange_id = exchange_id
        self.config = config

    def backoff(self, attempt: int) -> float:
        """The policy's backoff (exponential, capped, equal jitter) with ``HttpClient``'s jitter."""
        return backoff_delay(self.config, attempt, HttpClient.jitter())

    def error(self, message: str, path: str = "", cls: type[ProviderError] = ProviderError) -> ProviderError:
        return cls(redact(message, self.venue.secrets), provider=NAME, path=path)

    def __call__(self, what: str, call: Callable[[Any], Any]) -> Any:
        library = ccxt_library()
        exchange = self.venue.exchange
        attempts = self.config.max_retries + 1
        for attempt in range(attempts):
            retry_after = None
            with self.venue.lock:
                exchange.last_response_headers = exchange.last_request_url = None
                try:
                    return call(exchange)
                except library.NetworkError as exc:
                    text, path = self.scrub(exc)
                    problem = f"{exc.__class__.__name__}: {text}"
                    if isinstance(exc, (library.RateLimitExceeded, library.DDoSProtection)):
                        headers = exchange.last_response_headers or {}
                        retry_after = parse_retry_after(headers.get("Retry-After"))
                except library.BaseError as exc:
                    raise self.exchange_error(exc, what) from None
                except Exception as exc:  # ccxt choking on a reply it did not expect
                    text, path = self.scrub(exc)
                    raise self.error(f"{self.exchange_id} {what}: unusable reply ({exc.__class__.__name__}: "
                                     f"{text})", path) from None
            if retry_after is not None and retry_after > self.config.retry_after_max:
                raise self.error(f"{self.exchange_id} {what}: {problem}: the server asked to wait {retry_after:g}s "
                                 f"before retrying (Retry-After), more than PROVIDER_HTTP_RETRY_AFTER_MAX="
                                 f"{self.config.retry_after_max:g}s; giving up", path)
            if attempt + 1 >= attempts:
                raise self.error(f"{self.exchange_id} {what}: {problem}; giving up after {attempts} attempt(s)", path)
            delay = retry_after if retry_after is not None else self.backoff(attempt)
            logger.warning("%s: %s %s failed: %s; retry %d/%d in %.2fs", NAME, self.exchange_id, what, problem,
                           attempt + 1, self.config.max_retries, delay)
            HttpClient.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def scrub(self, exc: Exception) -> tuple[str, str]:
        """The error's text (URLs cut to their path, redacted, shortened) and the path it concerns."""
        text, path = _scrub(str(exc), self.venue.secrets)
        requested = self.venue.exchange.last_request_url
        if requested and not path:
            path = urlsplit(str(requested)).path
        return text, path

    def exchange_error(self, exc: Exception, what: str) -> ProviderError:
        library = ccxt_library()
        text, path = self.scrub(exc)
        kind = f"{exc.__class__.__name__}: {text}"
        if isinstance(exc, library.AuthenticationError):
            names = " / ".join(setting_name(self.exchange_id, s) for s in CREDENTIALS.values())
            return self.error(f"{self.exchange_id} refused the credentials ({kind}); check {names}", path,
                              ProviderConfigError)
        if isinstance(exc, (library.BadSymbol, library.NotSupported)):
            return self.error(f"{self.exchange_id} {what}: {kind}", path, ProviderConfigError)
        if isinstance(exc, library.ExchangeError):
            return self.error(f"{self.exchange_id} {what}: rejected by the exchange ({kind}); not retried", path)
        return self.error(f"{self.exchange_id} {what}: unusable reply ({kind})", path)

