"""The market data tables: the watchlist (``instruments``), the bars (``candles``) and the per-series
statistics the scans keep (``series_stats``)."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator
from django.db import models
from django.utils import timezone

from ..calendars import validate_calendar_code
from ..prices import MAX_DECIMALS
from ..timeframes import BarAlignment, Timeframe
from .base import AssetClass, choices_check


class Instrument(models.Model):
    """The watchlist: what we maintain, on which calendar, from which provider."""

    symbol = models.CharField(max_length=50, unique=True)
    asset_class = models.CharField(max_length=20, choices=AssetClass.choices)
    # An exchange_calendars code such as XNYS, or "24/7" (crypto), or "24/5" (the forex week).
    calendar = models.CharField(max_length=32, help_text="XNYS, XLON, … or 24/7 or 24/5 (forex week)")
    timeframes = models.JSONField(default=list, blank=True, help_text='e.g. ["1d", "1h"]')
    bar_alignment = models.CharField(
        max_length=16, choices=BarAlignment.choices, default=BarAlignment.CLOCK,
        help_text="where intraday bars start: on the clock grid (10:00, 11:00 …) or at each session's "
                  "open (09:30, 10:30 …, the last bar of a session shortened to the close)",
    )
    provider = models.CharField(max_length=32, default="synthetic")
    provider_options = models.JSONField(default=dict, blank=True)
    quality_thresholds = models.JSONField(
        default=dict, blank=True, help_text='per-instrument detector overrides, e.g. {"outlier_move": 0.3}'
    )
    availability_delay_minutes = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="minutes the source needs to publish a closed bar; empty: the asset class default "
                  "(STALE_AVAILABILITY_DELAY_MINUTES)",
    )
    # A second source the stored bars are compared with (``integrity.reconcile``); its bars are
    # fetched through the same provider layer but never written to ``candles``.
    reference_provider = models.CharField(
        max_length=32, default="", blank=True,
        help_text="a second source to reconcile the stored bars with (empty: none), e.g. ccxt",
    )
    reference_options = models.JSONField(
        default=dict, blank=True, help_text='the reference provider\'s options, e.g. {"exchange": "coinbaseexchange"}'
    )
    reconcile_tolerance = models.FloatField(
        null=True, blank=True,
        help_text="relative price difference, in percent, that still counts as agreement with the reference; "
                  "empty: the asset class default (RECONCILE_TOLERANCE_PCT)",
    )
    price_decimals = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MaxValueValidator(MAX_DECIMALS)],
        help_text="decimals a price of this instrument shows in the admin (its tick: 0.01 is 2); empty: "
                  "the asset class default (equity 2, forex 5, crypto six significant digits)",
    )
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "instruments"
        ordering = ["symbol"]
        constraints = [
            choices_check("asset_class", AssetClass, "instrument_asset_class_valid"),
            choices_check("bar_alignment", BarAlignment, "instrument_bar_alignment_valid"),
            models.CheckConstraint(
                condition=models.Q(reconcile_tolerance__isnull=True)
                | models.Q(reconcile_tolerance__gte=0, reconcile_tolerance__lt=100),
                name="instrument_reconcile_tolerance_valid"),
        ]

    def __str__(self) -> str:
        return self.symbol

    def clean(self) -> None:
        from ..series import instrument_rule_errors  # series reads these models: imported at call time

        errors = instrument_rule_errors(self.symbol, self.timeframes)
        try:
            validate_calendar_code(self.calendar)
        except ValueError as exc:
            errors["calendar"] = str(exc)
        if not isinstance(self.provider_options, dict):
            errors["provider_options"] = "a JSON object"
        if not isinstance(self.reference_options, dict):
            errors["reference_options"] = "a JSON object"
        if self.reconcile_tolerance is not None and not 0 <= self.reconcile_tolerance < 100:
            errors["reconcile_tolerance"] = "a percentage from 0 to below 100"
        if errors:
            raise ValidationError(errors)


class Candle(models.Model):
    """An OHLCV bar. ``ts`` is the bar open time (UTC).

    No unique constraint on (symbol, timeframe, ts): the table may be shared with other writers and
    legacy loads, which is why duplicate cleanup exists. Our own writer never creates duplicates
    because a series is written by one backfill at a time.
    """

    symbol = models.CharField(max_length=50)
    timeframe = models.CharField(max_length=20, choices=Timeframe.choices)
    ts = models.DateTimeField()
    open = models.FloatField()
    high = models.FloatField()
    low = models.FloatField()
    close = models.FloatField()
    volume = models.FloatField()
    source = models.CharField(max_length=50, default="", blank=True)
    ingested_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "candles"
        indexes = [
            # Every series scan (writer merge, detectors, coverage) is by (symbol, timeframe, ts).
            models.Index(fields=["symbol", "timeframe", "ts"], name="candles_symbol_tf_ts_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.symbol} {self.timeframe} {self.ts:%Y-%m-%d %H:%M}"


class SeriesStats(models.Model):
    """Per-series statistics (enrichment) used by the outlier test and the review screens."""

    symbol = models.CharField(max_length=50)
    timeframe = models.CharField(max_length=20, choices=Timeframe.choices)
    first_ts = models.DateTimeField(null=True, blank=True)
    last_ts = models.DateTimeField(null=True, blank=True)
    bar_count = models.BigIntegerField(default=0)
    expected_bars = models.BigIntegerField(null=True, blank=True)
    coverage_pct = models.FloatField(null=True, blank=True)
    robust_volatility = models.FloatField(null=True, blank=True)
    last_scan_at = models.DateTimeField(null=True, blank=True)
    last_scanned_ts = models.DateTimeField(null=True, blank=True)
    # Incremental anomaly scan watermarks: the largest candle id when the last scan of this series
    # began (rows with a larger id are new since), and when (wall clock) it began (a backfill of the
    # series active or finished since then may have revised rows in place).
    last_scanned_id = models.BigIntegerField(null=True, blank=True)
    last_scan_started_at = models.DateTimeField(null=True, blank=True)
    stale_alert_sent_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "series_stats"
        ordering = ["symbol", "timeframe"]
        verbose_name_plural = "series stats"
        constraints = [
            models.UniqueConstraint(fields=["symbol", "timeframe"], name="series_stats_unique_series"),
        ]

    def __str__(self) -> str:
        return f"{self.symbol} {self.timeframe}"
