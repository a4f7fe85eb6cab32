"""Schemathesis generates requests from our OpenAPI schema: no operation may answer 5xx.

Runs in-process over WSGI against the test database — PostgreSQL or SQLite, whichever DATABASE_URL
selects (CI runs it on both) — authenticated as a superuser so every operation is reachable
(anonymous requests would stop at 401).

A quarter of the generated strings are text PostgreSQL cannot store (a fuzzing dictionary): random
text rarely contains a NUL, and SQLite stores it happily, so only chance would otherwise send one to
a PostgreSQL query (a ``DataError``, a 500). Schemathesis keeps control characters out of URL paths
and rarely builds a valid body around a NUL in an untyped object (``provider_options``): those
cases are pinned in ``tests/review/test_api_hardening.py``.
"""

from __future__ import annotations

import pytest
import schemathesis
from django.contrib.auth.models import User
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig

from integrity.models import DataAnomaly, SymbolFailureTracking
from tests.helpers import add_instrument

CONFIG = SchemathesisConfig.from_dict({
    "dictionaries": {"unstorable": {"values": ["\x00", "BTC-USD\x00", "\x00BTC-USD", "a\x00b"]},
                     "calendars": {"values": ["24/7", "24/5", "XNYS"]},
                     "symbols": {"values": ["BTC-USD"]}},
    "generation": {"dictionaries": {"string": {"dictionary": "unstorable", "probability": 0.25}}},
    # The seeded instrument and a valid calendar more often than chance gives them, so writes get
    # past the lookup and the validation and their other fields reach the database.
    "parameters": {"path.symbol": {"dictionary": "symbols", "probability": 0.8},
                   "body.calendar": {"dictionary": "calendars", "probability": 0.8}},
})
schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", get_wsgi_application(), config=CONFIG)


@pytest.fixture
def token(db):
    # Like Django's test client: keep the test's connection open across in-process requests.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    user = User.objects.create_superuser("fuzzer", "f@example.com", None)
    add_instrument()
    DataAnomaly.objects.create(symbol="BTC-USD", timeframe="1h", anomaly_type="gap", severity="low",
                               description="x", affected_rows=1, fingerprint="fp")
    SymbolFailureTracking.objects.create(symbol="BTC-USD", consecutive_failures=1)
    yield Token.objects.create(user=user).key
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@schema.parametrize()
@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_operation_answers_a_server_error(case, token):
    case.call_and_validate(headers={"Authorization": f"Token {token}"}, checks=[not_a_server_error])
