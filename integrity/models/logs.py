"""The audit and history tables: the duplicate cleanup log (``duplicate_records_log``) with its id-list
column, and the health job's runs (``health_check_runs``)."""

from __future__ import annotations

import json

from django.db import models
from django.utils import timezone

from .base import choices_check


class BigIntegerArrayField(models.Field):
    """A list of ids: ``bigint[]`` on PostgreSQL, a JSON array in a text column elsewhere."""

    description = "List of big integers"

    def db_type(self, connection):
        if connection.vendor == "postgresql":
            return "bigint[]"
        return "text"

    def get_db_prep_value(self, value, connection, prepared=False):
        if value is None:
            return None
        ids = [int(v) for v in value]
        if connection.vendor == "postgresql":
            return ids
        return json.dumps(ids)

    def from_db_value(self, value, expression, connection):
        if value is None or isinstance(value, list):
            return value
        return json.loads(value)

    def to_python(self, value):
        if value is None or isinstance(value, list):
            return value
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                return json.loads(value)
            return [int(v) for v in value.split(",") if v.strip()]
        return list(value)

    def value_to_string(self, obj):
        return json.dumps(self.value_from_object(obj))

    def deconstruct(self):
        # Migrations name the field by its public path, whichever module defines it.
        name, _, args, kwargs = super().deconstruct()
        return name, "integrity.models.BigIntegerArrayField", args, kwargs


class DuplicateKeptBy(models.TextChoices):
    """The rule that chose the row a duplicate cleanup kept (``DuplicateRecordLog.kept_by``).

    The OHLC rules are the value rules of ``integrity.validation`` (the time rules are the same for
    every copy of a bar, so they cannot tell copies apart).
    """

    NEWEST_VALID = "newest_valid", "Newest copy that passes the OHLC rules"
    NEWEST_NONE_VALID = "newest_none_valid", "Newest copy (no copy passes the OHLC rules)"
    # Log rows written before the rule was recorded (before the kept_by column); those cleanups kept the newest copy.
    NOT_RECORDED = "", "Not recorded"


class DuplicateRecordLog(models.Model):
    """Audit of one cleaned duplicate group: which rows were deleted, which was kept and why."""

    symbol = models.CharField(max_length=50)
    timeframe = models.CharField(max_length=20)
    candle_time = models.DateTimeField()
    duplicate_count = models.IntegerField()
    duplicate_ids = BigIntegerArrayField(default=list, help_text="ids of the deleted rows")
    cleaned_at = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(auto_now_add=True)
    # --- added beyond the seed ---
    kept_id = models.BigIntegerField(null=True, blank=True)
    run_id = models.UUIDField(null=True, blank=True, help_text="the cleanup run that deleted them")
    kept_by = models.CharField(
        max_length=20, choices=DuplicateKeptBy.choices, default=DuplicateKeptBy.NOT_RECORDED, blank=True,
        help_text="the rule that chose the kept row: the newest valid copy, or the newest when none is valid",
    )

    class Meta:
        db_table = "duplicate_records_log"
        ordering = ["-cleaned_at"]
        indexes = [
            models.Index(fields=["symbol", "candle_time"], name="duplog_symbol_time_idx"),
            models.Index(fields=["-cleaned_at"], name="duplog_cleaned_at_desc_idx"),
        ]
        constraints = [choices_check("kept_by", DuplicateKeptBy, "duplog_kept_by_valid")]

    def __str__(self) -> str:
        return f"{self.symbol} {self.timeframe} {self.candle_time:%Y-%m-%d %H:%M} ×{self.duplicate_count}"


class HealthStatus(models.TextChoices):
    RUNNING = "running"
    HEALTHY = "healthy"
    WARNING = "warning"
    CRITICAL = "critical"


class HealthCheckRun(models.Model):
    """History of the health-monitoring job: what it found and what it sent."""

    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.IntegerField(null=True, blank=True)
    status = models.CharField(max_length=20, choices=HealthStatus.choices, default=HealthStatus.RUNNING)
    results = models.JSONField(default=dict, blank=True)
    errors = models.JSONField(default=list, blank=True)
    alerts_sent = models.IntegerField(default=0)

    class Meta:
        db_table = "health_check_runs"
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["-started_at"], name="health_started_desc_idx")]
        constraints = [choices_check("status", HealthStatus, "health_status_valid")]

    def __str__(self) -> str:
        return f"health run {self.started_at:%Y-%m-%d %H:%M} {self.status}"
