"""The quarantine of bars refused at ingest (``rejected_candles``): one row per series and bar time,
holding the values as they came, the rules they broke and the execution that refused them.

One row per (symbol, timeframe, ts), not per rejection: re-running a backfill over the same range
rejects the same bars again and updates their rows (the latest execution, values and rules win), so
the table never holds the same bar twice. Earlier executions keep their own account of what they
refused in their ``invalid_ohlc`` anomaly. A bar without a timestamp cannot be keyed: it is counted
in that anomaly, not quarantined.

The value columns are NULL where the value was not finite (SQLite cannot store NaN); ``raw_values``
keeps every value as it came, NaN and infinities as the text "nan", "inf", "-inf".
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from ..timeframes import Timeframe


class RejectedCandle(models.Model):
    symbol = models.CharField(max_length=50)
    timeframe = models.CharField(max_length=20, choices=Timeframe.choices)
    ts = models.DateTimeField(help_text="bar open time (UTC) as the provider sent it")
    open = models.FloatField(null=True, blank=True)
    high = models.FloatField(null=True, blank=True)
    low = models.FloatField(null=True, blank=True)
    close = models.FloatField(null=True, blank=True)
    volume = models.FloatField(null=True, blank=True)
    raw_values = models.JSONField(default=dict, blank=True,
                                  help_text="open, high, low, close, volume as they came (NaN/inf as text)")
    rules = models.CharField(max_length=255, help_text="the validation rules broken, comma-separated")
    copies = models.PositiveIntegerField(default=1, help_text="copies of this bar time in the refused page")
    execution_id = models.UUIDField(help_text="the backfill execution that last refused the bar")
    provider = models.CharField(max_length=50, default="", blank=True)
    rejected_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "rejected_candles"
        constraints = [
            models.UniqueConstraint(fields=["symbol", "timeframe", "ts"], name="rejected_candles_series_ts_uniq"),
        ]
        indexes = [models.Index(fields=["execution_id"], name="rejected_candles_execution_idx")]

    def __str__(self) -> str:
        return f"{self.symbol} {self.timeframe} {self.ts:%Y-%m-%d %H:%M} ({self.rules})"

    @property
    def rule_list(self) -> list[str]:
        return [code for code in self.rules.split(",") if code]
