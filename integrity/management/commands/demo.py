"""``manage.py demo``: a small synthetic watchlist, every job run over it, and a summary.

Safe to run repeatedly: instruments are upserted, backfills are incremental and idempotent, and the
simulated legacy double-write happens on the first run only.
"""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Count
from django.utils import timezone

from integrity.backfill import BackfillResult, run_backfill
from integrity.cleanup import cleanup_duplicate_records
from integrity.health.job import run_health_monitoring
from integrity.management.output import IntegrityCommand, backfill_table
from integrity.models import BackfillState, Candle, DataAnomaly, DuplicateRecordLog, Instrument
from integrity.quality.anomalies import detect_data_anomalies
from integrity.quality.enrichment import enrich_series
from integrity.series import active_series

WATCHLIST = [
    # symbol, asset class, calendar, timeframes, provider options (faults make the demo interesting)
    ("AAPL", "equity", "XNYS", ["1d", "1h"], {"seed": 1, "base_price": 190.0, "spike_rate": 0.002,
                                              "gap_rate": 0.003, "invalid_rate": 0.004}),
    ("MSFT", "equity", "XNYS", ["1d"], {"seed": 2, "base_price": 410.0}),
    ("BTC-USD", "crypto", "24/7", ["1h"], {"seed": 3, "base_price": 60000.0, "volatility": 0.03,
                                           "invalid_rate": 0.004}),
    ("EURUSD", "forex", "24/5", ["1h"], {"seed": 4, "base_price": 1.08, "volatility": 0.004,
                                          "gap_rate": 0.003}),
]
LOOKBACK = {"1d": timedelta(days=730), "1h": timedelta(days=60)}
LEGACY_DUPLICATES = 3  # bars a simulated legacy loader writes twice, for the cleanup step to find


class Command(IntegrityCommand):
    help = "Load a synthetic watchlist, run every job over it and print a summary (for a first look)."
    exit_codes = {
        0: "the demo ran and printed its summary",
        1: "a step failed (its error is printed)",
    }

    def handle(self, *args, **options):
        self.section("1. Watchlist")
        self.load_watchlist()

        self.section("2. Backfill (synthetic provider, tracked executions)")
        results = self.backfill()
        self.stdout.write(backfill_table(results))

        self.section("3. Duplicate cleanup (audited: keep the latest row, log the rest)")
        self.cleanup()

        self.section("4. Anomaly detection (calendar-aware)")
        self.detect()

        self.section("5. Series statistics")
        for r in enrich_series():
            coverage = f"{r.coverage_pct:.2f}%" if r.coverage_pct is not None else "-"
            self.stdout.write(f"  {r.symbol:8} {r.timeframe:3} {r.bar_count:>6} bars  coverage {coverage:>8}")

        self.section("6. Health check")
        report = run_health_monitoring(scan_anomalies=False)
        self.stdout.write(f"  status {report.status}: {report.stale_series.count} stale series, "
                          f"{report.failing_symbols.count} failing symbols, "
                          f"{report.anomalies.open} open anomalies, {len(report.alerts)} alert(s) sent")

        self.section("Summary")
        self.stdout.write(f"  candles stored:      {Candle.objects.count()}")
        by_status = dict(BackfillState.objects.values_list("status").annotate(n=Count("id")))
        self.stdout.write(f"  backfill executions: {by_status}")
        open_anomalies = DataAnomaly.objects.exclude(resolution_status="resolved")
        by_type = dict(open_anomalies.values_list("anomaly_type").annotate(n=Count("id")))
        self.stdout.write(f"  open anomalies:      {by_type or 'none'}")

        self.section("Next")
        self.stdout.write(
            "  Open the admin:\n"
            "    .venv/bin/python manage.py createsuperuser\n"
            "    .venv/bin/python manage.py runserver\n"
            "    then browse http://127.0.0.1:8000/admin/\n"
            "  Run a backfill yourself:\n"
            "    .venv/bin/python manage.py backfill --symbols AAPL --timeframe 1d\n"
            "  Re-fetch the gaps found above and re-check them (see docs/operations.md, the loop):\n"
            "    .venv/bin/python manage.py repair_anomalies --types gap"
        )
        if any(not r.ok for r in results):
            self.stderr.write(self.style.WARNING("some backfills did not complete: see the table above"))

    def load_watchlist(self) -> None:
        for symbol, asset_class, calendar, timeframes, provider_options in WATCHLIST:
            Instrument.objects.update_or_create(
                symbol=symbol,
                defaults={"asset_class": asset_class, "calendar": calendar, "timeframes": timeframes,
                          "provider": "synthetic", "provider_options": provider_options, "active": True},
            )
            self.stdout.write(f"  {symbol:8} {asset_class:6} calendar {calendar:5} timeframes {', '.join(timeframes)}")

    def backfill(self) -> list[BackfillResult]:
        now = timezone.now()
        results = []
        for series in active_series():
            has_data = Candle.objects.filter(symbol=series.symbol, timeframe=series.timeframe).exists()
            start = None if has_data else now - LOOKBACK.get(series.timeframe, timedelta(days=30))
            results.append(run_backfill(series.symbol, series.timeframe, start=start, requested_by="demo"))
        return results

    def cleanup(self) -> None:
        if not DuplicateRecordLog.objects.exists():
            # Our writer never doubles a bar; a shared table's other writers may. Simulate one once.
            copies = list(Candle.objects.filter(symbol="MSFT", timeframe="1d").order_by("ts")[:LEGACY_DUPLICATES])
            for candle in copies:
                candle.pk = None
                candle.source = "legacy-loader"
            Candle.objects.bulk_create(copies)
            self.stdout.write(f"  a simulated legacy loader wrote {len(copies)} MSFT 1d bars a second time")
        result = cleanup_duplicate_records()
        self.stdout.write(f"  {result.groups_total} duplicate group(s), {result.rows_deleted} row(s) deleted "
                          f"and logged in duplicate_records_log")

    def detect(self) -> None:
        result = detect_data_anomalies()
        summary = result.as_dict()
        self.stdout.write(f"  scanned {summary['series_scanned']} series: {summary['found']} finding(s), "
                          f"{summary['created']} new, {summary['updated']} updated, "
                          f"{summary['resolved']} auto-resolved")
        for anomaly_type, n in sorted(summary["by_type"].items()):
            self.stdout.write(f"    {anomaly_type:14} {n}")

    def section(self, title: str) -> None:
        self.stdout.write(self.style.MIGRATE_HEADING(f"\n{title}"))
