"""API throttles: anonymous requests and failed authentications, per client address.

Rates are ``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]`` (``anon``, ``failed_auth``; from the
``API_THROTTLE_*`` settings), read when a throttle is made so a changed setting applies at once.
The client address is ``REMOTE_ADDR``, or the X-Forwarded-For entry ``NUM_PROXIES`` (``API_NUM_PROXIES``)
trusted proxies in; counts live in the default cache.

* **anon** — requests without credentials. DRF checks permissions before throttles, so an anonymous
  request to a protected endpoint would be refused (401) without ever being counted: the exception
  handler counts those (``count_refused_authentication``), ``AnonymousRateThrottle`` counts the ones
  the endpoint allows (schema, docs).
* **failed_auth** — requests whose credentials were refused: a wrong or malformed token, or an
  ``Authorization`` header no enabled scheme accepts (e.g. a Basic password). An address that used
  up its budget is refused by ``FailedAuthenticationGate`` (429, ``Retry-After``) before any
  credential is looked at, for the rest of the window — so a correct guess answers no differently.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import APIException, AuthenticationFailed, Throttled
from rest_framework.settings import api_settings
from rest_framework.throttling import AnonRateThrottle, SimpleRateThrottle


class LiveRateMixin:
    """DRF binds ``THROTTLE_RATES`` when it is imported; read the rate from the current settings."""

    scope: str

    def get_rate(self):
        try:
            return api_settings.DEFAULT_THROTTLE_RATES[self.scope]
        except KeyError:
            raise ImproperlyConfigured(f"REST_FRAMEWORK['DEFAULT_THROTTLE_RATES'] has no rate for "
                                       f"{self.scope!r}") from None


class AnonymousRateThrottle(LiveRateMixin, AnonRateThrottle):
    """Requests without credentials, per client address (authenticated requests are not counted)."""


class FailedAuthenticationThrottle(LiveRateMixin, SimpleRateThrottle):
    """Refused credentials per client address: ``allow_request`` only looks, ``record_failure`` counts."""

    scope = "failed_auth"

    def get_cache_key(self, request, view=None):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}

    def allow_request(self, request, view=None) -> bool:
        if self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)
        self.history = self.cache.get(self.key, [])
        self.now = self.timer()
        while self.history and self.history[-1] <= self.now - self.duration:
            self.history.pop()
        return len(self.history) < self.num_requests

    def record_failure(self, request) -> None:
        if self.rate is None:
            return
        self.allow_request(request)
        self.history.insert(0, self.now)
        self.cache.set(self.key, self.history, self.duration)


class FailedAuthenticationGate(BaseAuthentication):
    """First of the authentication classes; authenticates nobody. Refuses every request from an
    address over its failed-authentication budget, before the next classes check credentials."""

    def authenticate(self, request):
        throttle = FailedAuthenticationThrottle()
        if not throttle.allow_request(request):
            raise Throttled(throttle.wait(), detail="Too many failed authentications from this address.")
        return None

    def authenticate_header(self, request):
        # DRF takes the 401 challenge (WWW-Authenticate) from the first class: give the real one's.
        for authenticator in getattr(request, "authenticators", None) or ():
            if not isinstance(authenticator, FailedAuthenticationGate):
                header = authenticator.authenticate_header(request)
                if header:
                    return header
        return None


class FailedAuthenticationGateScheme(OpenApiAuthenticationExtension):
    """For the OpenAPI schema: the gate is no authentication scheme, there is nothing to document."""

    target_class = FailedAuthenticationGate
    name: list[str] = []

    def get_security_requirement(self, auto_schema):
        return None

    def get_security_definition(self, auto_schema):
        return []


def presented_credentials(request) -> bool:
    return bool(request.META.get("HTTP_AUTHORIZATION", "").strip())


def count_refused_authentication(request, view, exc: APIException) -> APIException:
    """Count a request refused as unauthenticated (401) and return the exception to answer with.

    With credentials it is a failed authentication (the gate blocks the address once over budget);
    without, an anonymous request: over the anonymous rate it is answered 429 instead of 401.
    """
    if isinstance(exc, AuthenticationFailed) or presented_credentials(request):
        FailedAuthenticationThrottle().record_failure(request)
        return exc
    throttle = AnonymousRateThrottle()
    if not throttle.allow_request(request, view):
        return Throttled(throttle.wait())
    return exc
