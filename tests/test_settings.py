"""Settings come from the environment, with safe development defaults.

The settings module is executed afresh under a probe name with a controlled environment (the
running Django keeps its own settings), and one test starts a real process to see what a user sees.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from marketdata_site.env import envbool, envint, envlist
from marketdata_site.logging import JsonFormatter

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_FILE = ROOT / "marketdata_site" / "settings.py"
SETTINGS_ENV = ("SECRET_KEY", "DEBUG", "ALLOWED_HOSTS", "DATABASE_URL", "REDIS_URL", "LOG_FORMAT", "LOG_LEVEL")


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
