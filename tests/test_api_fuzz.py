"""Schemathesis generates requests from our OpenAPI schema: no operation may answer 5xx.

Runs in-process over WSGI against the test database, authenticated as a superuser so every
operation is reachable (anonymous requests would stop at 401).
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

from integrity.models import DataAnomaly, SymbolFailureTracking
from tests.helpers import add_instrument

schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", get_wsgi_application())

pytestmark = pytest.mark.slow


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
