"""The staging table of reconciliation (``reference_bars``): a reference source's bars for one run,
joined with ``candles`` in SQL and deleted when the run ends. Never read as market data."""

from __future__ import annotations

from django.db import models


class ReferenceBar(models.Model):
    """One bar of a reference source, staged for the reconciliation run ``run_id``."""

    run_id = models.UUIDField()
    ts = models.DateTimeField()
    open = models.FloatField()
    high = models.FloatField()
    low = models.FloatField()
    close = models.FloatField()
    volume = models.FloatField()

    class Meta:
        db_table = "reference_bars"
        indexes = [
            # The comparison joins a run's bars with the stored series on ts; the cleanup deletes by run.
            models.Index(fields=["run_id", "ts"], name="reference_bars_run_ts_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.run_id} {self.ts:%Y-%m-%d %H:%M}"
