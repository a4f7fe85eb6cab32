"""The API as a hostile or careless client meets it: no internals leak, no input is a 500.

* the health endpoint shows a failed check as one line, never its traceback or a file path;
* anonymous requests and failed authentications are throttled per client address (tiny rates set
  here only; the cache that counts them is emptied before every test, see conftest);
* text no database column can store (NUL, a lone surrogate) anywhere in a body, a query parameter or
  a URL is refused before it reaches the database — on both databases alike;
* a JSON document nested too deep, or a body over DATA_UPLOAD_MAX_MEMORY_SIZE, is a JSON 4xx.
"""

from __future__ import annotations

import base64
import json
import logging

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import override_settings
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from integrity.health.job import run_health_monitoring
from integrity.models import BackfillState, DataAnomaly, HealthCheckRun, Instrument
from tests.helpers import add_instrument

pytestmark = pytest.mark.django_db


def superuser_client(remote_addr: str = "127.0.0.1") -> APIClient:
    user = User.objects.create_superuser(f"admin-{User.objects.count()}", "a@example.com", None)
    client = APIClient(REMOTE_ADDR=remote_addr)
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def throttle_rates(anon: str | None = "1000/min", failed_auth: str | None = "1000/min", **rest):
    """Settings with these rates (and any other REST_FRAMEWORK keys), for one test."""
    return override_settings(REST_FRAMEWORK={**settings.REST_FRAMEWORK, **rest,
                                             "DEFAULT_THROTTLE_RATES": {"anon": anon, "failed_auth": failed_auth}})


# --- health: no internals ------------------------------------------------------------------------


class TestHealthErrors:
    @pytest.fixture
    def failed_run(self, monkeypatch):
        def broken_scan(**kwargs):
            raise FileNotFoundError(2, "No such file or directory", "/srv/marketdata/calendars/xnys.pickle")

        monkeypatch.setattr("integrity.quality.anomalies.detect_data_anomalies", broken_scan)
        return run_health_monitoring()

    def test_a_failed_check_is_one_line_without_traceback_or_file_path(self, failed_run):
        client = superuser_client()
        body = client.get("/api/v1/health/").json()
        expected = [{"check": "anomaly_scan",
                     "error": "FileNotFoundError: [Errno 2] No such file or directory: '<path>'"}]
        assert body["latest_run"]["errors"] == expected
        assert body["latest_run"]["results"]["errors"] == expected
        text = json.dumps(body)
        assert "Traceback" not in text and "/srv/" not in text and ".py" not in text

    def test_the_stored_run_and_the_log_keep_the_traceback(self, monkeypatch, caplog):
        def broken_scan(**kwargs):
            raise RuntimeError("detectors exploded")

        monkeypatch.setattr("integrity.quality.anomalies.detect_data_anomalies", broken_scan)
        with caplog.at_level(logging.ERROR, logger="integrity.health"):
            run_health_monitoring()
        assert "Traceback" in HealthCheckRun.objects.get().errors[0]["traceback"]
        logged = [r for r in caplog.records if r.getMessage() == "health check anomaly_scan failed"]
        assert logged and logged[0].exc_info is not None

    def test_a_multi_line_error_shows_its_first_line(self):
        HealthCheckRun.objects.create(status="critical", errors=[
            {"check": "staleness", "error": "OperationalError: server closed the connection\nLINE 1: SELECT …",
             "traceback": 'File "/app/integrity/health.py", line 1'}])
        body = superuser_client().get("/api/v1/health/").json()
        assert body["latest_run"]["errors"] == [
            {"check": "staleness", "error": "OperationalError: server closed the connection"}]


# --- throttling ----------------------------------------------------------------------------------


class TestAnonymousThrottle:
    def test_anonymous_requests_over_the_rate_are_429_with_retry_after(self):
        client = APIClient()
        with throttle_rates(anon="2/min"):
            assert [client.get("/api/v1/anomalies/").status_code for _ in range(2)] == [401, 401]
            refused = client.get("/api/v1/anomalies/")
        assert refused.status_code == 429
        assert int(refused["Retry-After"]) > 0 and "throttled" in refused.json()["detail"]

    def test_anonymous_requests_to_an_open_endpoint_are_counted_the_same(self):
        client = APIClient()
        with throttle_rates(anon="2/min"):
            assert client.get("/api/v1/anomalies/").status_code == 401
            assert client.get("/api/schema/?format=json").status_code == 200
            assert client.get("/api/schema/?format=json").status_code == 429

    def test_authenticated_requests_are_not_counted(self):
        client = superuser_client()
        with throttle_rates(anon="1/min"):
            assert [client.get("/api/v1/anomalies/").status_code for _ in range(3)] == [200, 200, 200]
            assert APIClient().get("/api/v1/anomalies/").status_code == 401  # the budget is untouched

    def test_each_address_has_its_own_budget(self):
        with throttle_rates(anon="1/min"):
            assert APIClient(REMOTE_ADDR="203.0.113.1").get("/api/v1/anomalies/").status_code == 401
            assert APIClient(REMOTE_ADDR="203.0.113.1").get("/api/v1/anomalies/").status_code == 429
            assert APIClient(REMOTE_ADDR="203.0.113.2").get("/api/v1/anomalies/").status_code == 401


class TestFailedAuthenticationThrottle:
    def test_after_the_budget_of_wrong_tokens_the_address_is_refused_even_with_a_right_token(self):
        good = superuser_client(remote_addr="198.51.100.7")
        bad = APIClient(REMOTE_ADDR="198.51.100.7", HTTP_AUTHORIZATION="Token wrong-guess")
        with throttle_rates(failed_auth="2/min"):
            assert [bad.get("/api/v1/anomalies/").status_code for _ in range(2)] == [401, 401]
            refused = good.get("/api/v1/anomalies/")
            assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
            assert "failed authentications" in refused.json()["detail"]
            assert bad.get("/api/v1/anomalies/").status_code == 429

    def test_a_wrong_basic_password_is_a_failed_authentication(self):
        User.objects.create_user("alice", password="right-password")
        basic = "Basic " + base64.b64encode(b"alice:wrong-password").decode()
        client = APIClient(HTTP_AUTHORIZATION=basic)
        with throttle_rates(failed_auth="2/min", anon="1000/min"):
            assert [client.get("/api/v1/anomalies/").status_code for _ in range(3)] == [401, 401, 429]

    def test_a_good_token_is_not_counted(self):
        client = superuser_client()
        with throttle_rates(failed_auth="1/min"):
            assert [client.get("/api/v1/anomalies/").status_code for _ in range(3)] == [200, 200, 200]

    def test_a_forged_x_forwarded_for_does_not_escape_the_throttle(self):
        with throttle_rates(failed_auth="2/min"):
            statuses = [APIClient(HTTP_AUTHORIZATION="Token wrong", HTTP_X_FORWARDED_FOR=f"192.0.2.{i}")
                        .get("/api/v1/anomalies/").status_code for i in range(3)]
        assert statuses == [401, 401, 429]

    def test_behind_a_trusted_proxy_the_client_is_the_forwarded_address(self):
        def attempt(client_addr: str) -> int:
            return APIClient(REMOTE_ADDR="10.0.0.2", HTTP_AUTHORIZATION="Token wrong",
                             HTTP_X_FORWARDED_FOR=client_addr).get("/api/v1/anomalies/").status_code

        with throttle_rates(failed_auth="1/min", NUM_PROXIES=1):
            assert [attempt("192.0.2.1"), attempt("192.0.2.1"), attempt("192.0.2.2")] == [401, 429, 401]

    def test_a_wrong_token_still_gets_the_token_challenge(self):
        response = APIClient(HTTP_AUTHORIZATION="Token wrong").get("/api/v1/anomalies/")
        assert response.status_code == 401 and response["WWW-Authenticate"] == "Token"


# --- text no database can store ------------------------------------------------------------------

NUL = "\x00"


def instrument_body(**changes) -> dict:
    return {"symbol": "ETH-USD", "asset_class": "crypto", "calendar": "24/7", "timeframes": ["1h"],
            "provider": "synthetic", "provider_options": {}, **changes}


class TestUnstorableTextInBodies:
    @pytest.mark.parametrize("body,where", [
        (instrument_body(symbol=f"ETH{NUL}USD"), "symbol"),
        (instrument_body(provider_options={f"seed{NUL}": 1}), 'a key in provider_options ("seed\\u0000")'),
        (instrument_body(provider_options={"seed": f"1{NUL}"}), "provider_options.seed"),
        (instrument_body(provider="csv", provider_options={"file": f"/data/eth{NUL}.csv"}), "provider_options.file"),
        (instrument_body(provider_options={"a": {"b": [f"{NUL}"]}}), "provider_options.a.b[0]"),
        (instrument_body(calendar=f"24/7{NUL}"), "calendar"),
    ], ids=["symbol", "option-key", "option-value", "csv-path", "nested", "calendar"])
    def test_a_nul_in_an_instrument_is_a_400_naming_the_field(self, body, where):
        response = superuser_client().post("/api/v1/instruments/", body, format="json")
        assert response.status_code == 400, response.content
        assert response.json()["detail"] == f"request body: {where}: text may not contain the NUL character (\\u0000)"
        assert not Instrument.objects.exists()

    def test_a_nul_in_a_backfill_request_is_a_400(self):
        add_instrument("BTC-USD")
        response = superuser_client().post("/api/v1/backfills/", {"symbol": f"BTC-USD{NUL}", "timeframe": "1h"},
                                           format="json")
        assert response.status_code == 400 and "symbol: text may not contain" in response.json()["detail"]
        assert not BackfillState.objects.exists()

    def test_a_nul_in_a_review_note_is_a_400(self):
        anomaly = DataAnomaly.objects.create(symbol="BTC-USD", timeframe="1h", anomaly_type="gap", severity="low",
                                             description="x", affected_rows=1, fingerprint="fp")
        response = superuser_client().post(f"/api/v1/anomalies/{anomaly.pk}/acknowledge/", {"note": f"ok{NUL}"},
                                           format="json")
        assert response.status_code == 400 and "note: text may not contain" in response.json()["detail"]
        anomaly.refresh_from_db()
        assert anomaly.resolution_status == "open"

    def test_a_nul_in_a_multipart_body_is_a_400(self):
        response = superuser_client().post("/api/v1/instruments/", {"symbol": f"X{NUL}", "calendar": "24/7"},
                                           format="multipart")
        assert response.status_code == 400 and "symbol: text may not contain" in response.json()["detail"]

    def test_a_nul_in_a_form_encoded_body_is_a_400(self):
        response = superuser_client().generic("POST", "/api/v1/instruments/", "symbol=X%00Y&calendar=24%2F7",
                                              content_type="application/x-www-form-urlencoded")
        assert response.status_code == 400 and "symbol: text may not contain" in response.json()["detail"]

    def test_a_lone_surrogate_is_a_400(self):
        raw = json.dumps(instrument_body(symbol="ETH-USD", provider_options={"seed": "\\ud800"})).replace("\\\\", "\\")
        response = superuser_client().generic("POST", "/api/v1/instruments/", raw, content_type="application/json")
        assert response.status_code == 400
        assert "provider_options.seed: text must be valid Unicode" in response.json()["detail"]
        assert not Instrument.objects.exists()


LISTS = ["backfills", "anomalies", "duplicates", "symbol-failures", "instruments", "series"]


class TestUnstorableTextInUrls:
    @pytest.mark.parametrize("endpoint", LISTS)
    def test_a_nul_in_a_filter_value_is_a_400_naming_the_parameter(self, endpoint):
        response = superuser_client().get(f"/api/v1/{endpoint}/?symbol=BTC%00")
        assert response.status_code == 400
        assert response.json() == {"symbol": ['query parameter "symbol": text may not contain the NUL character '
                                              "(\\u0000)"]}

    def test_a_nul_in_a_parameter_name_is_a_400(self):
        response = superuser_client().get("/api/v1/instruments/?sym%00bol=1")
        assert response.status_code == 400 and "query" in response.json()

    def test_an_encoded_surrogate_in_a_parameter_is_read_as_replacement_characters(self):
        # %ED%A0%80 is a UTF-8-encoded surrogate: Django decodes it to U+FFFD, which can be stored.
        assert superuser_client().get("/api/v1/instruments/?calendar=%ED%A0%80").status_code == 200

    @pytest.mark.parametrize("path", ["instruments/BTC%00/", "symbol-failures/BTC%00/", "symbol-failures/BTC%00/reset/"])
    def test_a_nul_in_a_url_lookup_is_a_404(self, path):
        add_instrument("BTC-USD")
        client = superuser_client()
        response = client.post(f"/api/v1/{path}") if path.endswith("reset/") else client.get(f"/api/v1/{path}")
        assert response.status_code == 404
        assert "NUL" in response.json()["detail"]

    def test_a_nul_in_a_url_lookup_of_a_change_is_a_404(self):
        add_instrument("BTC-USD")
        response = superuser_client().patch("/api/v1/instruments/BTC%00/", {"active": False}, format="json")
        assert response.status_code == 404


# --- malformed and over-large bodies -------------------------------------------------------------


class TestMalformedBodies:
    def test_json_nested_100000_levels_is_a_400(self):
        response = superuser_client().generic("POST", "/api/v1/instruments/", "[" * 100_000,
                                              content_type="application/json")
        assert response.status_code == 400
        assert "nests deeper than 32 levels" in response.json()["detail"]

    def test_json_nested_past_the_limit_but_parseable_is_a_400(self):
        nested: dict = {}
        for _ in range(40):
            nested = {"a": nested}
        response = superuser_client().post("/api/v1/instruments/", instrument_body(provider_options=nested),
                                           format="json")
        assert response.status_code == 400
        assert "nests deeper than 32 levels" in response.json()["detail"]
        assert not Instrument.objects.exists()

    @override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1000)
    @pytest.mark.parametrize("content_type,body", [
        ("application/json", json.dumps(instrument_body(provider_options={"pad": "x" * 2000}))),
        ("application/x-www-form-urlencoded", "symbol=" + "x" * 2000),
    ], ids=["json", "form"])
    def test_a_body_over_the_upload_limit_is_a_json_413(self, content_type, body):
        response = superuser_client().generic("POST", "/api/v1/instruments/", body, content_type=content_type)
        assert response.status_code == 413
        assert response["Content-Type"] == "application/json"
        assert response.json()["detail"] == ("Request body too large: the limit is 1000 bytes "
                                             "(DATA_UPLOAD_MAX_MEMORY_SIZE).")
        assert not Instrument.objects.exists()

    @override_settings(DATA_UPLOAD_MAX_NUMBER_FIELDS=10)
    def test_too_many_form_fields_is_a_json_400(self):
        body = "&".join(f"f{i}=1" for i in range(20))
        response = superuser_client().generic("POST", "/api/v1/instruments/", body,
                                              content_type="application/x-www-form-urlencoded")
        assert response.status_code == 400
        assert "DATA_UPLOAD_MAX_NUMBER_FIELDS" in response.json()["detail"]
