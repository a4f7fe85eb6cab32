"""The rules an instrument's ``provider_options`` meet with the providers that call a web API
(binance, alpaca, ccxt): which option names a provider accepts, the ``limit`` option, and where
requests may go (the ``base_url`` option against the operator's endpoint setting).

Where requests go (``resolve_base_url``): the endpoint comes from the provider's setting
(``BINANCE_BASE_URL``, ``ALPACA_DATA_BASE_URL``, ``CCXT_<EXCHANGE>_API_URL``), which only the
operator controls. An instrument's ``base_url`` option may change the path on that endpoint's host
and port, but another host only when ``PROVIDER_ALLOWED_HOSTS`` lists it: provider options are
edited by API users, and a free ``base_url`` would let them send our API keys anywhere or probe the
network from the server (a connection error tells an open port from a closed one). API keys travel
only over https, except to a loopback host (127.0.0.0/8, ::1, localhost). The rules are checked when
options are saved (admin/API, through each provider's ``validate_options``), again when a fetch
resolves its URL, and once more by ``http.HttpClient`` itself before a request carrying keys is sent.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from integrity.conf import conf

from .base import ProviderConfigError

ALLOWED_HOSTS_SETTING = "PROVIDER_ALLOWED_HOSTS"
KEYS_RULE = "API keys are sent only over https, except to a loopback host (127.0.0.0/8, ::1, localhost)"

def parse_base_url(value: Any, provider: str, source: str = "base_url", *, allow_userinfo: bool = False) -> httpx.URL:
    """An http(s) URL with a host and without query or fragment; ``ProviderConfigError`` naming
    ``source`` (the option, or the setting it came from) otherwise. User info (``user:password@``)
    only where ``allow_userinfo`` (an operator's setting, e.g. a proxy login): in an option it would
    store a password in the database, and it can make a URL read as if it went to another host."""
    url = str(value).strip()
    try:
        parsed = httpx.URL(url)
        host = parsed.host  # decoding an IDNA host may fail too (http://xn--)
    except (httpx.InvalidURL, TypeError, ValueError):
        parsed = host = None
    if parsed is None or parsed.scheme not in ("http", "https") or not host:
        raise ProviderConfigError(
            f"{source} must be an http(s) URL such as https://api.example.com, got {url!r}", provider=provider
        )
    if parsed.userinfo and not allow_userinfo:
        raise ProviderConfigError(f"{source} must not carry a user name or password", provider=provider)
    if parsed.query or parsed.fragment:
        raise ProviderConfigError(f"{source} must not carry a query string or fragment: {url!r}", provider=provider)
    return parsed


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 (also IPv4-mapped) or ``localhost``: traffic that never leaves the machine."""
    host = host.strip().lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def host_port(url: httpx.URL) -> tuple[str, int | None]:
    """(host, port) of a URL, the port defaulted by its scheme: what "the same endpoint" compares."""
    port = url.port or {"http": 80, "https": 443}.get(url.scheme)
    return url.host.lower().rstrip("."), port


def allowed_hosts() -> list[tuple[str, int | None]]:
    """``PROVIDER_ALLOWED_HOSTS``: (host, port) pairs; port None allows every port of the host.

    Entries are host names or addresses, optionally with a port: ``md-proxy.internal``,
    ``md-proxy.internal:8443``, ``10.0.0.5``, ``[fd00::5]:8080``. A string is split at commas."""
    raw = conf.raw(ALLOWED_HOSTS_SETTING) or ()
    entries = raw.split(",") if isinstance(raw, str) else list(raw)
    hosts = []
    for entry in entries:
        entry = str(entry).strip()
        if not entry:
            continue
        try:
            url = httpx.URL(f"http://{entry}")
            host = url.host
        except (httpx.InvalidURL, TypeError, ValueError):
            url = host = None
        if url is None or not host or url.path not in ("", "/") or url.query or url.userinfo:
            raise ProviderConfigError(f"setting {ALLOWED_HOSTS_SETTING} must list host names or addresses, "
                                      f"optionally with :port (e.g. md-proxy.internal:8443), got {entry!r}")
        hosts.append((url.host.lower().rstrip("."), url.port))
    return hosts


def check_keys_transport(url: httpx.URL, provider: str, source: str) -> None:
    """API keys go over https, or to a loopback host; ``ProviderConfigError`` naming the rule otherwise."""
    if url.scheme != "https" and not is_loopback_host(url.host):
        raise ProviderConfigError(
            f"{source} {_origin(url)} would send the API keys over plain {url.scheme}: {KEYS_RULE}",
            provider=provider)


def _origin(url: httpx.URL) -> str:
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{url.scheme}://{host}" + (f":{url.port}" if url.port else "")


def resolve_base_url(options: Mapping[str, Any], setting_name: str, default: str, provider: str, *,
                     sends_keys: bool = False) -> str:
    """The endpoint a fetch (or, when options are saved, a future fetch) talks to.

    The setting ``setting_name`` names it (else the public ``default``). An instrument's
    ``base_url`` option is used instead when it keeps the setting's host and port (another path
    there, e.g. a prefix on a proxy) or when its host is listed in ``PROVIDER_ALLOWED_HOSTS``;
    otherwise it is refused. With ``sends_keys`` the result must be https or a loopback host.
    Every refusal is a ``ProviderConfigError`` that names the rule.
    """
    option = options.get("base_url")
    chosen = parse_base_url(option, provider) if option not in (None, "") else None
    source = f"setting {setting_name}"
    configured_value = conf.lookup(setting_name, default)
    configured = parse_base_url(configured_value, provider, source, allow_userinfo=True)
    if chosen is not None and host_port(chosen) != host_port(configured):
        host, port = host_port(chosen)
        if not any(host == allowed and (allowed_port is None or allowed_port == port)
                   for allowed, allowed_port in allowed_hosts()):
            raise ProviderConfigError(
                f"base_url {_origin(chosen)} is not allowed: provider endpoints come from the server's "
                f"settings; an instrument's base_url may only keep the host and port of the setting "
                f"{setting_name} ({_origin(configured)}) or point at a host listed in "
                f"{ALLOWED_HOSTS_SETTING}", provider=provider)
    url, value = (chosen, option) if chosen is not None else (configured, configured_value)
    if sends_keys:
        check_keys_transport(url, provider, "base_url" if chosen is not None else source)
    return str(value).strip().rstrip("/")


def page_limit(options: Mapping[str, Any], maximum: int, provider: str) -> int:
    """The ``limit`` option: an integer 1..maximum (an integral string too), ``maximum`` when unset."""
    raw = options.get("limit")
    if raw is None or raw == "":
        return maximum
    value: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, float) and raw.is_integer():
        value = int(raw)
    elif isinstance(raw, str) and raw.strip().isdigit():
        value = int(raw.strip())
    if value is None or not 1 <= value <= maximum:
        raise ProviderConfigError(f"limit must be an integer 1..{maximum}, got {raw!r}", provider=provider)
    return value


def check_option_names(options: Any, known: Iterable[str], provider: str) -> dict[str, Any]:
    """``provider_options`` must be a JSON object naming only options this provider knows.

    Used when an instrument's options are edited (admin/API), not at fetch time: a run with
    ``--provider`` overriding the instrument's own may meet options meant for that one.
    """
    if not isinstance(options, Mapping):
        raise ProviderConfigError(f"provider_options must be a JSON object, got {type(options).__name__}",
                                  provider=provider)
    known = tuple(known)
    unknown = sorted(str(k) for k in options if k not in known)
    if unknown:
        raise ProviderConfigError(f"unknown option(s) {', '.join(unknown)}; {provider} accepts "
                                  f"{', '.join(known)}", provider=provider)
    return dict(options)

