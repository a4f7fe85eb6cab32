"""``manage.py health_check``: run the health-monitoring job now and report.

Exit codes: 0 healthy, 1 warning, 2 critical (see ``HealthReport.compute_status`` for what each means).
"""

from __future__ import annotations

import json

from django.core.management.base import CommandError

from integrity.health.job import run_health_monitoring
from integrity.health.report import HealthReport
from integrity.health.workers import worker_line
from integrity.management.output import (
    IntegrityCommand,
    add_format_argument,
    keep_stdout_for_json,
    parse_as_of,
)

EXIT_CODES = {"healthy": 0, "warning": 1, "critical": 2}


class Command(IntegrityCommand):
    help = "Run the health-monitoring job now (staleness, failures, anomaly scan, alerts). Exit 0/1/2."
    exit_codes = {
        0: "healthy",
        1: "warning",
        2: "critical — or the arguments are unusable (usage error; then nothing ran)",
    }

    def add_arguments(self, parser):
        add_format_argument(parser)
        parser.add_argument("--skip-scan", action="store_true",
                            help="leave the anomaly scan out (stored anomalies still count)")
        parser.add_argument("--as-of", help="judge as of this UTC time (ISO; default now): replays the "
                                            "judgement of a past moment, read-only (nothing is reaped, "
                                            "recorded, repaired or sent)")

    def handle(self, *args, **options):
        keep_stdout_for_json(options)
        as_of = parse_as_of(options.get("as_of"))
        # --as-of replays a past judgement: read-only (nothing reaped, recorded, repaired or sent).
        report = run_health_monitoring(as_of=as_of, scan_anomalies=not options["skip_scan"], replay=as_of is not None)
        if options["format"] == "json":
            self.stdout.write(json.dumps(report.as_dict(), indent=2, default=str))
        else:
            self.write_text(report)
        code = EXIT_CODES.get(report.status, 2)
        if code:
            raise CommandError(f"health {report.status}", returncode=code)

    def write_text(self, report: HealthReport) -> None:
        out = self.stdout.write
        run = "replay, nothing recorded" if report.replay else f"run {report.run_id}"
        out(f"health: {report.status.upper()} ({run}, {report.duration_ms} ms, "
            f"as of {report.as_of.isoformat()})")
        stale = report.stale_series
        out(f"stale series: {stale.count} of {stale.watched or 0} (a bar due at a scheduled backfill, "
            f"{stale.backfill_cron!r}, missing for more than {stale.grace_minutes} min)")
        for s in stale.series[:20]:
            if s["hours_stale"] is None:
                out(f"  {s['symbol']} {s['timeframe']}: no bars")
            else:
                out(f"  {s['symbol']} {s['timeframe']}: last bar {s['last_bar']}, expected {s['expected_bar']}, "
                    f"due {s['due_at']}, missing for {s['hours_stale']:.1f} h")
        failing = report.failing_symbols
        out(f"failing symbols: {failing.count} ({failing.at_threshold} at or above {failing.threshold})")
        for f in failing.symbols[:20]:
            out(f"  {f['symbol']}: {f['consecutive_failures']} consecutive failure(s) — {f['last_error'][:100]}")
        anomalies = report.anomalies
        by_sev = ", ".join(f"{k} {v}" for k, v in anomalies.by_severity.items())
        out(f"open anomalies: {anomalies.open} ({by_sev})")
        if report.anomaly_scan:
            scan = report.anomaly_scan
            out(f"anomaly scan: {scan['series_scanned']} series, {scan['created']} new, {scan['updated']} updated, "
                f"{scan['resolved']} auto-resolved")
        if report.workers is not None:
            out(worker_line(report.workers))
        if report.reaped_backfills:
            out(f"reaped backfills: {len(report.reaped_backfills)}")
        for alert in report.alerts:
            channels = ", ".join(f"{k} {v}" for k, v in alert["channels"].items())
            out(f"alert sent: {alert['subject']} [{channels}]")
        for error in report.errors:
            out(self.style.ERROR(f"check {error['check']} failed: {error['error']}"))
