"""Settings come from the environment, with safe development defaults.

The settings module is executed afresh under a probe name with a controlled environment (the
running Django keeps its own settings), and one test starts a real process to see what a user sees.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from marketdata_site.env import envbool, envint, envlist, envproxyheader, envrate
from marketdata_site.logging import JsonFormatter

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_FILE = ROOT / "marketdata_site" / "settings.py"
HTTPS_ENV = ("SECURE_SSL_REDIRECT", "SECURE_REDIRECT_EXEMPT", "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS",
             "SECURE_HSTS_PRELOAD", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_PROXY_SSL_HEADER")
API_ENV = ("API_THROTTLE_ANON", "API_THROTTLE_FAILED_AUTH", "API_NUM_PROXIES")
SETTINGS_ENV = ("SECRET_KEY", "DEBUG", "ALLOWED_HOSTS", "DATABASE_URL", "REDIS_URL", "LOG_FORMAT", "LOG_LEVEL",
                *HTTPS_ENV, *API_ENV)
# Everything a TLS deployment behind a proxy sets (as README "Deployment" says).
PRODUCTION_HTTPS = {"SECURE_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO", "SECURE_SSL_REDIRECT": "true",
                    "SECURE_HSTS_SECONDS": "31536000", "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
                    "SECURE_HSTS_PRELOAD": "true", "SESSION_COOKIE_SECURE": "true", "CSRF_COOKIE_SECURE": "true"}


def load_settings(monkeypatch, **env):
    """Execute settings.py with exactly these variables set (the others unset); return the module."""
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location("marketdata_site._settings_probe", SETTINGS_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestSecretKey:
    def test_it_refuses_the_development_key_when_debug_is_off(self, monkeypatch):
        with pytest.raises(ImproperlyConfigured, match="SECRET_KEY is the development default"):
            load_settings(monkeypatch, DEBUG="false")

    def test_it_starts_with_debug_off_and_a_real_key(self, monkeypatch):
        settings = load_settings(monkeypatch, DEBUG="false", SECRET_KEY="a-long-random-production-value")
        assert settings.DEBUG is False
        assert settings.SECRET_KEY == "a-long-random-production-value"

    def test_it_uses_the_development_key_by_default_in_debug(self, monkeypatch):
        settings = load_settings(monkeypatch)
        assert settings.DEBUG is True and settings.SECRET_KEY == settings.DEV_SECRET_KEY

    def test_a_real_process_refuses_to_start_and_says_why(self):
        env = {k: v for k, v in os.environ.items() if k not in SETTINGS_ENV}
        env.update(DEBUG="false", DJANGO_SETTINGS_MODULE="marketdata_site.settings")
        proc = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0
        assert "SECRET_KEY is the development default while DEBUG is off" in proc.stderr


class TestDatabaseUrl:
    def test_it_defaults_to_a_sqlite_file_in_the_project_folder(self, monkeypatch):
        db = load_settings(monkeypatch).DATABASES["default"]
        assert db["ENGINE"] == "django.db.backends.sqlite3"
        assert Path(db["NAME"]) == ROOT / "db.sqlite3"

    def test_a_postgres_url_switches_to_postgresql(self, monkeypatch):
        db = load_settings(monkeypatch, DATABASE_URL="postgres://u:p@db.example:6543/md").DATABASES["default"]
        assert db["ENGINE"] == "django.db.backends.postgresql"
        assert (db["HOST"], db["PORT"], db["NAME"], db["USER"]) == ("db.example", 6543, "md", "u")


class TestOtherSettings:
    def test_time_is_utc_and_timezone_aware(self, monkeypatch):
        settings = load_settings(monkeypatch)
        assert settings.TIME_ZONE == "UTC" and settings.USE_TZ is True

    def test_allowed_hosts_is_a_comma_list(self, monkeypatch):
        settings = load_settings(monkeypatch, ALLOWED_HOSTS="md.example.com, api.example.com")
        assert settings.ALLOWED_HOSTS == ["md.example.com", "api.example.com"]

    def test_redis_url_switches_the_task_broker(self, monkeypatch):
        assert load_settings(monkeypatch).Q_CLUSTER["orm"] == "default"
        settings = load_settings(monkeypatch, REDIS_URL="redis://cache:6379/0")
        assert settings.Q_CLUSTER["redis"] == "redis://cache:6379/0" and "orm" not in settings.Q_CLUSTER

    def test_a_malformed_boolean_is_a_clear_error(self, monkeypatch):
        monkeypatch.setenv("X_FLAG", "maybe")
        with pytest.raises(ValueError, match="X_FLAG='maybe' is not a boolean"):
            envbool("X_FLAG")

    def test_a_malformed_integer_is_a_clear_error(self, monkeypatch):
        monkeypatch.setenv("X_NUM", "ten")
        with pytest.raises(ValueError, match="X_NUM='ten' is not an integer"):
            envint("X_NUM", 1)

    def test_envlist_drops_empty_items(self, monkeypatch):
        monkeypatch.setenv("X_LIST", "a,, b ,")
        assert envlist("X_LIST") == ["a", "b"]


def run_check_deploy(**env) -> subprocess.CompletedProcess:
    """``manage.py check --deploy`` in a real process with DEBUG off, a real key and these variables."""
    clean = {k: v for k, v in os.environ.items() if k not in SETTINGS_ENV}
    clean.update(DJANGO_SETTINGS_MODULE="marketdata_site.settings", DEBUG="false",
                 SECRET_KEY=secrets.token_urlsafe(50), ALLOWED_HOSTS="md.example.com", **env)
    return subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=ROOT,
                          env=clean, capture_output=True, text=True, timeout=120)


class TestHttps:
    def test_it_is_all_off_by_default_so_plain_http_development_works(self, monkeypatch):
        settings = load_settings(monkeypatch)
        assert settings.SECURE_PROXY_SSL_HEADER is None and settings.SECURE_SSL_REDIRECT is False
        assert settings.SECURE_HSTS_SECONDS == 0
        assert not (settings.SECURE_HSTS_INCLUDE_SUBDOMAINS or settings.SECURE_HSTS_PRELOAD)
        assert not (settings.SESSION_COOKIE_SECURE or settings.CSRF_COOKIE_SECURE)

    def test_every_https_setting_comes_from_the_environment(self, monkeypatch):
        settings = load_settings(monkeypatch, **PRODUCTION_HTTPS)
        assert settings.SECURE_PROXY_SSL_HEADER == ("HTTP_X_FORWARDED_PROTO", "https")
        assert settings.SECURE_SSL_REDIRECT is True and settings.SECURE_HSTS_SECONDS == 31536000
        assert settings.SECURE_HSTS_INCLUDE_SUBDOMAINS is True and settings.SECURE_HSTS_PRELOAD is True
        assert settings.SESSION_COOKIE_SECURE is True and settings.CSRF_COOKIE_SECURE is True

    def test_the_probes_are_exempt_from_the_redirect(self, monkeypatch):
        assert load_settings(monkeypatch).SECURE_REDIRECT_EXEMPT == [r"^healthz$", r"^metrics$"]

    def test_a_proxy_header_may_name_the_value_meaning_https(self, monkeypatch):
        monkeypatch.setenv("X_PROXY", "HTTP_X_FORWARDED_SSL=on")
        assert envproxyheader("X_PROXY") == ("HTTP_X_FORWARDED_SSL", "on")

    def test_a_proxy_header_not_in_request_meta_form_is_a_clear_error(self, monkeypatch):
        with pytest.raises(ValueError, match=r"SECURE_PROXY_SSL_HEADER='X-Forwarded-Proto' is not a request.META "
                                             r"header name: use the HTTP_ form, e\.g\. HTTP_X_FORWARDED_PROTO"):
            load_settings(monkeypatch, SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto")

    def test_a_negative_hsts_duration_is_a_clear_error(self, monkeypatch):
        with pytest.raises(ValueError, match="SECURE_HSTS_SECONDS='-1' must be at least 0"):
            load_settings(monkeypatch, SECURE_HSTS_SECONDS="-1")

    def test_a_malformed_https_flag_is_a_clear_error(self, monkeypatch):
        with pytest.raises(ValueError, match="SESSION_COOKIE_SECURE='sometimes' is not a boolean"):
            load_settings(monkeypatch, SESSION_COOKIE_SECURE="sometimes")

    def test_check_deploy_with_the_https_settings_reports_no_issue(self):
        proc = run_check_deploy(**PRODUCTION_HTTPS)
        assert proc.returncode == 0, proc.stderr
        assert "System check identified no issues" in proc.stdout

    def test_check_deploy_without_them_names_what_is_missing(self):
        proc = run_check_deploy()
        assert proc.returncode != 0
        for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
            assert warning in proc.stderr
        assert "drf_spectacular" not in proc.stderr  # nothing else to warn about


@pytest.mark.django_db
class TestHttpsRequests:
    """What the HTTPS settings do to requests (a new test client builds its middleware with them)."""

    def test_plain_http_is_redirected_to_https_but_the_probes_are_not(self, settings):
        from django.test import Client

        settings.SECURE_SSL_REDIRECT = True
        client = Client()
        redirected = client.get("/api/v1/anomalies/?page_size=5")
        assert redirected.status_code == 301
        assert redirected["Location"] == "https://testserver/api/v1/anomalies/?page_size=5"
        assert client.get("/healthz").status_code == 200

    def test_behind_a_tls_proxy_a_forwarded_https_request_is_served_with_hsts(self, settings):
        from django.test import Client

        settings.SECURE_SSL_REDIRECT = True
        settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
        settings.SECURE_HSTS_SECONDS = 31536000
        response = Client().get("/api/v1/anomalies/", HTTP_X_FORWARDED_PROTO="https")
        assert response.status_code == 401  # reached the API: not redirected
        assert response["Strict-Transport-Security"] == "max-age=31536000"

    def test_the_session_and_csrf_cookies_are_secure_when_set(self, settings, admin_user):
        from django.test import Client

        settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = True
        client = Client()
        assert client.get("/admin/login/", secure=True).cookies["csrftoken"]["secure"] is True
        client.post("/admin/login/", {"username": "admin", "password": "password"}, secure=True)
        assert client.cookies["sessionid"]["secure"] is True


class TestApiThrottleSettings:
    def test_the_defaults(self, monkeypatch):
        settings = load_settings(monkeypatch)
        assert settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] == {"anon": "60/min", "failed_auth": "10/min"}
        assert settings.REST_FRAMEWORK["NUM_PROXIES"] == 0

    def test_rates_and_proxies_come_from_the_environment(self, monkeypatch):
        settings = load_settings(monkeypatch, API_THROTTLE_ANON="5/second", API_THROTTLE_FAILED_AUTH="off",
                                 API_NUM_PROXIES="1")
        assert settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] == {"anon": "5/second", "failed_auth": None}
        assert settings.REST_FRAMEWORK["NUM_PROXIES"] == 1

    def test_a_malformed_rate_is_a_clear_error(self, monkeypatch):
        monkeypatch.setenv("X_RATE", "60 per minute")
        with pytest.raises(ValueError, match="X_RATE='60 per minute' is not a rate: use N/s, N/min"):
            envrate("X_RATE", "1/min")


class TestLogging:
    def test_text_is_the_default_format(self, monkeypatch):
        settings = load_settings(monkeypatch)
        assert settings.LOGGING["handlers"]["stdout"]["formatter"] == "text"
        assert settings.LOGGING["handlers"]["stdout"]["stream"] == "ext://sys.stdout"

    def test_log_format_json_selects_the_json_formatter(self, monkeypatch):
        settings = load_settings(monkeypatch, LOG_FORMAT="json")
        assert settings.LOGGING["handlers"]["stdout"]["formatter"] == "json"

    def test_the_json_formatter_writes_one_object_with_extras_and_the_traceback(self):
        try:
            raise RuntimeError("kaput")
        except RuntimeError:
            record = logging.getLogger("integrity.test").makeRecord(
                "integrity.test", logging.ERROR, __file__, 1, "backfill %s failed", ("AAPL",),
                sys.exc_info(), extra={"symbol": "AAPL", "attempt": 2},
            )
        line = JsonFormatter().format(record)
        assert "\n" not in line
        payload = json.loads(line)
        assert payload["level"] == "ERROR" and payload["logger"] == "integrity.test"
        assert payload["message"] == "backfill AAPL failed"
        assert (payload["symbol"], payload["attempt"]) == ("AAPL", 2)
        assert "RuntimeError: kaput" in payload["exc_info"]

    def test_a_real_process_logs_one_json_object_per_line_to_stdout(self):
        env = {k: v for k, v in os.environ.items() if k not in SETTINGS_ENV}
        env.update(LOG_FORMAT="json", DJANGO_SETTINGS_MODULE="marketdata_site.settings")
        code = ("import django, logging; django.setup(); log = logging.getLogger('integrity.probe'); "
                "log.warning('first %s', 1); log.info('second\\nline')")
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert [json.loads(line)["message"] for line in lines] == ["first 1", "second\nline"]
        assert {json.loads(line)["logger"] for line in lines} == {"integrity.probe"}
