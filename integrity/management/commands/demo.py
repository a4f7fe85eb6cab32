"""``manage.py demo``: a small synthetic watchlist, the jobs run over it, and a summary.

Safe to run repeatedly: instruments are upserted, backfills are incremental and idempotent.
"""

from __future__ import annotations

from datetime import timedelta

from django.core.management.base import BaseCommand
from django.db.models import Count
from django.utils import timezone

from integrity.backfill import run_backfill
from integrity.models import BackfillState, Candle, DataAnomaly, Instrument

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


class Command(BaseCommand):
    help = "Load a synthetic watchlist, run the jobs over it and print a summary (for a first look)."

    def handle(self, *args, **options):
        self.section("1. Watchlist")
        for symbol, asset_class, calendar, timeframes, provider_options in WATCHLIST:
            Instrument.objects.update_or_create(
                symbol=symbol,
                defaults={"asset_class": asset_class, "calendar": calendar, "timeframes": timeframes,
                          "provider": "synthetic", "provider_options": provider_options, "active": True},
            )
            self.stdout.write(f"  {symbol:8} {asset_class:6} calendar {calendar:5} timeframes {', '.join(timeframes)}")

        self.section("2. Backfill (synthetic provider, tracked executions)")
        now = timezone.now()
        for instrument in Instrument.objects.filter(active=True):
            for timeframe in instrument.timeframes:
                has_data = Candle.objects.filter(symbol=instrument.symbol, timeframe=timeframe).exists()
                start = None if has_data else now - LOOKBACK[timeframe]
                result = run_backfill(instrument.symbol, timeframe, start=start, requested_by="demo")
                self.stdout.write(
                    f"  {instrument.symbol:8} {timeframe:3} {result.status:9} +{result.inserted} inserted, "
                    f"{result.updated} updated, {result.invalid} invalid bars rejected"
                    + (f" — {result.error}" if result.error else "")
                )

        self.section("3. Summary")
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
            "    .venv/bin/python manage.py backfill --symbols AAPL --timeframe 1d"
        )

    def section(self, title: str) -> None:
        self.stdout.write(self.style.MIGRATE_HEADING(f"\n{title}"))
