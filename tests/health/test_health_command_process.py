"""``manage.py health_check`` as cron or a monitoring agent runs it: a separate process, its exit code
and a stdout that is only the JSON document (the logs go to stderr)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from integrity.models import DataAnomaly, HealthCheckRun
from tests.helpers import ROOT, worker_database_url


@pytest.mark.slow  # starts a Django process
@pytest.mark.django_db(transaction=True)  # committed rows: the child process reads them
class TestHealthCheckProcess:
    def test_a_critical_run_exits_2_with_only_json_on_stdout(self):
        DataAnomaly.objects.create(symbol="BTC-USD", timeframe="1h", anomaly_type="gap", severity="critical",
                                   description="3 bars missing", fingerprint="process-test")
        env = {**os.environ, "DATABASE_URL": worker_database_url(), "DJANGO_SETTINGS_MODULE": "marketdata_site.settings",
               "LOG_LEVEL": "INFO", "ALERT_EMAIL_RECIPIENTS": "", "ALERT_WEBHOOK_URL": ""}
        done = subprocess.run([sys.executable, "manage.py", "health_check", "--format", "json"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
        report = json.loads(done.stdout)  # nothing but the document
        assert report["status"] == "critical"
        assert report["anomalies"]["open_by_severity"]["critical"] == 1
        assert [a["kind"] for a in report["alerts"]] == ["critical_anomaly"]
        assert "ALERT critical_anomaly" in done.stderr  # the log channel, moved to stderr
        assert HealthCheckRun.objects.get(pk=report["run_id"]).status == "critical"
