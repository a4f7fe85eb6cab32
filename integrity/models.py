"""The integrity data model.

The four seed tables keep their exact names and columns (``backfill_state_persistent``,
``data_anomalies``, ``duplicate_records_log``, ``symbol_failure_tracking``); what we add is added,
never renamed. Enumerations are ``TextChoices`` with a database CHECK constraint, and invariants the
database can enforce (one active backfill per series, status values) are enforced there.
"""

from __future__ import annotations

import json
import uuid

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone

from .calendars import validate_calendar_code
from .timeframes import BarAlignment, Timeframe

__all__ = [
    "AssetClass",
    "Timeframe",
    "Instrument",
    "Candle",
    "BackfillStatus",
    "BackfillState",
    "InvalidTransition",
    "Severity",
    "AnomalyType",
    "ResolutionStatus",
    "DataAnomaly",
    "DuplicateKeptBy",
    "DuplicateRecordLog",
    "SymbolFailureTracking",
    "HealthStatus",
    "HealthCheckRun",
    "SeriesStats",
]


def _choices_check(field: str, choices: type[models.TextChoices], name: str) -> models.CheckConstraint:
    return models.CheckConstraint(condition=Q(**{f"{field}__in": choices.values}), name=name)


class AssetClass(models.TextChoices):
    EQUITY = "equity", "Equity"
    CRYPTO = "crypto", "Crypto"
    FOREX = "forex", "Forex"


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
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "instruments"
        ordering = ["symbol"]
        constraints = [
            _choices_check("asset_class", AssetClass, "instrument_asset_class_valid"),
            _choices_check("bar_alignment", BarAlignment, "instrument_bar_alignment_valid"),
        ]

    def __str__(self) -> str:
        return self.symbol

    def clean(self) -> None:
        from .series import instrument_rule_errors  # series reads these models: imported at call time

        errors = instrument_rule_errors(self.symbol, self.timeframes)
        try:
            validate_calendar_code(self.calendar)
        except ValueError as exc:
            errors["calendar"] = str(exc)
        if not isinstance(self.provider_options, dict):
            errors["provider_options"] = "a JSON object"
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


class BackfillStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    IN_PROGRESS = "in_progress", "In progress"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"


ACTIVE_STATUSES = (BackfillStatus.PENDING, BackfillStatus.IN_PROGRESS)
TERMINAL_STATUSES = (BackfillStatus.COMPLETED, BackfillStatus.FAILED)


class InvalidTransition(Exception):
    """A backfill state change that the lifecycle does not allow (terminal states are final)."""


class BackfillState(models.Model):
    """One tracked execution of a backfill of one (symbol, timeframe) series."""

    execution_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    symbol = models.CharField(max_length=50)
    asset_class = models.CharField(max_length=20, choices=AssetClass.choices)
    timeframe = models.CharField(max_length=20, choices=Timeframe.choices)
    status = models.CharField(max_length=50, choices=BackfillStatus.choices, default=BackfillStatus.PENDING)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    records_inserted = models.IntegerField(default=0)
    error_message = models.TextField(null=True, blank=True)  # noqa: DJ001 — the seed's column is nullable
    retry_count = models.IntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # --- added beyond the seed ---
    records_updated = models.IntegerField(default=0, help_text="stored bars the provider revised")
    invalid_bars = models.IntegerField(default=0, help_text="bars rejected by validation")
    provider = models.CharField(max_length=32, default="", blank=True)
    range_start = models.DateTimeField(null=True, blank=True)
    range_end = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    checkpoint_ts = models.DateTimeField(null=True, blank=True, help_text="last bar committed")
    worker = models.CharField(max_length=200, default="", blank=True, help_text="host:pid that ran it")
    requested_by = models.CharField(max_length=150, default="", blank=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = "backfill_state_persistent"
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["symbol", "status"], name="backfill_symbol_status_idx"),
            models.Index(fields=["execution_id"], name="backfill_execution_id_idx"),
            models.Index(fields=["-created_at"], name="backfill_created_at_desc_idx"),
            # The reaper's query: in_progress rows by heartbeat age.
            models.Index(
                fields=["heartbeat_at"],
                name="backfill_inprogress_hb_idx",
                condition=Q(status="in_progress"),
            ),
        ]
        constraints = [
            _choices_check("status", BackfillStatus, "backfill_status_valid"),
            _choices_check("timeframe", Timeframe, "backfill_timeframe_valid"),
            # At most one active (pending or in_progress) execution per series. A partial unique
            # index: both PostgreSQL and SQLite enforce it, so two workers cannot both claim.
            models.UniqueConstraint(
                fields=["symbol", "timeframe"],
                condition=Q(status__in=["pending", "in_progress"]),
                name="backfill_one_active_per_series",
                violation_error_message="an active backfill already exists for this symbol and timeframe",
            ),
            models.CheckConstraint(condition=Q(records_inserted__gte=0), name="backfill_records_nonneg"),
            models.CheckConstraint(condition=Q(retry_count__gte=0), name="backfill_retry_nonneg"),
        ]

    def __str__(self) -> str:
        return f"{self.symbol} {self.timeframe} {self.status} ({self.execution_id})"

    def save(self, *args, **kwargs):
        # Terminal states are final, whoever saves: a row loaded as completed/failed may be edited
        # (e.g. details) but its status cannot change.
        loaded = getattr(self, "_loaded_status", None)
        if loaded in TERMINAL_STATUSES and self.status != loaded:
            raise InvalidTransition(f"execution {self.execution_id} is {loaded}; terminal states are final")
        super().save(*args, **kwargs)
        self._loaded_status = self.status

    @classmethod
    def from_db(cls, db, field_names, values):
        instance = super().from_db(db, field_names, values)
        instance._loaded_status = instance.__dict__.get("status")
        return instance

    # --- state changes: compare-and-set updates, the row count says whether we won -------------
    def _transition(self, allowed_from: tuple[str, ...], **changes) -> None:
        changes.setdefault("updated_at", timezone.now())
        updated = BackfillState.objects.filter(pk=self.pk, status__in=allowed_from).update(**changes)
        if updated != 1:
            current = BackfillState.objects.filter(pk=self.pk).values_list("status", flat=True).first()
            target = changes.get("status", "?")
            raise InvalidTransition(
                f"cannot move execution {self.execution_id} from {current} to {target}"
            )
        for key, value in changes.items():
            setattr(self, key, value)
        self.refresh_from_db(fields=list(changes))
        self._loaded_status = self.status

    def mark_started(self, worker: str = "") -> None:
        now = timezone.now()
        self._transition(
            (BackfillStatus.PENDING,),
            status=BackfillStatus.IN_PROGRESS,
            started_at=now,
            heartbeat_at=now,
            worker=worker,
        )

    def record_progress(self, *, checkpoint_ts, inserted: int, updated: int, invalid: int) -> None:
        """Heartbeat plus checkpoint after a committed batch (counts are increments)."""
        now = timezone.now()
        changed = BackfillState.objects.filter(pk=self.pk, status=BackfillStatus.IN_PROGRESS).update(
            heartbeat_at=now,
            updated_at=now,
            checkpoint_ts=checkpoint_ts,
            records_inserted=models.F("records_inserted") + inserted,
            records_updated=models.F("records_updated") + updated,
            invalid_bars=models.F("invalid_bars") + invalid,
        )
        if changed != 1:
            raise InvalidTransition(
                f"execution {self.execution_id} is no longer in progress (reaped or finished elsewhere)"
            )
        self.refresh_from_db(
            fields=["heartbeat_at", "checkpoint_ts", "records_inserted", "records_updated", "invalid_bars"]
        )

    def heartbeat(self) -> None:
        changed = BackfillState.objects.filter(pk=self.pk, status=BackfillStatus.IN_PROGRESS).update(
            heartbeat_at=Now(), updated_at=Now()
        )
        if changed != 1:
            raise InvalidTransition(f"execution {self.execution_id} is no longer in progress")

    def mark_completed(self, records_inserted: int | None = None) -> None:
        changes = {"status": BackfillStatus.COMPLETED, "completed_at": timezone.now()}
        if records_inserted is not None:
            changes["records_inserted"] = records_inserted
        self._transition((BackfillStatus.IN_PROGRESS,), **changes)

    def mark_failed(self, error: str) -> None:
        self._transition(
            ACTIVE_STATUSES,
            status=BackfillStatus.FAILED,
            completed_at=timezone.now(),
            error_message=str(error)[:10_000],
        )


class Severity(models.TextChoices):
    LOW = "low", "Low"
    MEDIUM = "medium", "Medium"
    HIGH = "high", "High"
    CRITICAL = "critical", "Critical"


class AnomalyType(models.TextChoices):
    GAP = "gap", "Gap"
    OFF_CALENDAR = "off_calendar", "Bar outside trading hours"
    OUTLIER = "outlier", "Outlier"
    STALE = "stale", "Stale series"
    INVALID_OHLC = "invalid_ohlc", "Invalid OHLC"
    DUPLICATE = "duplicate", "Duplicate candles"


class ResolutionStatus(models.TextChoices):
    OPEN = "open", "Open"
    ACKNOWLEDGED = "acknowledged", "Acknowledged"
    RESOLVED = "resolved", "Resolved"


class DataAnomaly(models.Model):
    symbol = models.CharField(max_length=50)
    timeframe = models.CharField(max_length=20, choices=Timeframe.choices)
    anomaly_type = models.CharField(max_length=100, choices=AnomalyType.choices)
    detected_at = models.DateTimeField(default=timezone.now)
    severity = models.CharField(max_length=20, choices=Severity.choices)
    description = models.TextField()
    affected_rows = models.IntegerField(default=0)
    resolution_status = models.CharField(
        max_length=20, choices=ResolutionStatus.choices, default=ResolutionStatus.OPEN
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # --- added beyond the seed ---
    period_start = models.DateTimeField(null=True, blank=True)
    period_end = models.DateTimeField(null=True, blank=True)
    fingerprint = models.CharField(max_length=64, db_index=True)
    details = models.JSONField(default=dict, blank=True)
    last_seen_at = models.DateTimeField(default=timezone.now)
    execution_id = models.UUIDField(null=True, blank=True)
    acknowledged_by = models.CharField(max_length=150, default="", blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.CharField(max_length=150, default="", blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution_note = models.TextField(default="", blank=True)
    alert_sent_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "data_anomalies"
        ordering = ["-detected_at"]
        verbose_name_plural = "data anomalies"
        indexes = [
            models.Index(fields=["symbol", "-detected_at"], name="anomaly_symbol_detected_idx"),
            models.Index(fields=["severity", "resolution_status"], name="anomaly_severity_status_idx"),
            # The review list: filtered by status (and severity), newest first, keyset-paginated on
            # (detected_at, id) — these serve it as an index scan that stops after one page.
            models.Index(fields=["resolution_status", "-detected_at", "-id"], name="anomaly_status_detected_idx"),
            models.Index(fields=["severity", "resolution_status", "-detected_at", "-id"],
                         name="anomaly_sev_status_det_idx"),
            models.Index(fields=["-detected_at", "-id"], name="anomaly_detected_id_idx"),
        ]
        constraints = [
            _choices_check("severity", Severity, "anomaly_severity_valid"),
            _choices_check("anomaly_type", AnomalyType, "anomaly_type_valid"),
            _choices_check("resolution_status", ResolutionStatus, "anomaly_resolution_valid"),
            # Detection is idempotent: one unresolved anomaly per fingerprint.
            models.UniqueConstraint(
                fields=["fingerprint"],
                condition=Q(resolution_status__in=["open", "acknowledged"]),
                name="anomaly_one_unresolved_per_fingerprint",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.anomaly_type} {self.symbol} {self.timeframe} ({self.severity})"

    # --- review lifecycle: open → acknowledged → resolved (resolved is final) -------------------
    # The one table of review moves, used here (one anomaly: API) and by
    # ``integrity.quality.review.review_anomalies`` (a selection: admin actions):
    # target status → (the statuses it may be reached from, the "by" field, the "at" field).
    REVIEW_MOVES = {
        ResolutionStatus.ACKNOWLEDGED: ((ResolutionStatus.OPEN,), "acknowledged_by", "acknowledged_at"),
        ResolutionStatus.RESOLVED: ((ResolutionStatus.OPEN, ResolutionStatus.ACKNOWLEDGED), "resolved_by",
                                    "resolved_at"),
    }

    @classmethod
    def review_changes(cls, target: str, by: str, at, note: str = "") -> dict:
        """The column values a move to ``target`` writes (who, when, the optional note)."""
        _, by_field, at_field = cls.REVIEW_MOVES[target]
        changes = {"resolution_status": target, by_field: by, at_field: at, "updated_at": at}
        if note:
            changes["resolution_note"] = note
        return changes

    def _review(self, target: str, by: str, note: str) -> None:
        changes = self.review_changes(target, by, timezone.now(), note)
        allowed_from = self.REVIEW_MOVES[target][0]
        updated = DataAnomaly.objects.filter(pk=self.pk, resolution_status__in=allowed_from).update(**changes)
        if updated != 1:
            current = DataAnomaly.objects.filter(pk=self.pk).values_list("resolution_status", flat=True).first()
            raise InvalidTransition(f"anomaly {self.pk} is {current}; cannot move it to {target}")
        for key, value in changes.items():
            setattr(self, key, value)

    def acknowledge(self, by: str = "", note: str = "") -> None:
        self._review(ResolutionStatus.ACKNOWLEDGED, by, note)

    def resolve(self, by: str = "", note: str = "") -> None:
        self._review(ResolutionStatus.RESOLVED, by, note)


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


class DuplicateKeptBy(models.TextChoices):
    """The rule that chose the row a duplicate cleanup kept (``DuplicateRecordLog.kept_by``).

    The OHLC rules are the value rules of ``integrity.validation`` (the time rules are the same for
    every copy of a bar, so they cannot tell copies apart).
    """

    NEWEST_VALID = "newest_valid", "Newest copy that passes the OHLC rules"
    NEWEST_NONE_VALID = "newest_none_valid", "Newest copy (no copy passes the OHLC rules)"
    # Log rows written before the rule was recorded (migration 0005); those cleanups kept the newest copy.
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
        constraints = [_choices_check("kept_by", DuplicateKeptBy, "duplog_kept_by_valid")]

    def __str__(self) -> str:
        return f"{self.symbol} {self.timeframe} {self.candle_time:%Y-%m-%d %H:%M} ×{self.duplicate_count}"


class SymbolFailureTracking(models.Model):
    symbol = models.CharField(max_length=50, unique=True)
    consecutive_failures = models.IntegerField(default=0)
    last_failure_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    alert_sent = models.BooleanField(default=False)
    alert_sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # --- added beyond the seed ---
    last_error = models.TextField(default="", blank=True)

    class Meta:
        db_table = "symbol_failure_tracking"
        ordering = ["-consecutive_failures", "symbol"]
        verbose_name_plural = "symbol failure tracking"
        indexes = [
            models.Index(fields=["-consecutive_failures"], name="failure_consecutive_desc_idx"),
            models.Index(fields=["alert_sent", "consecutive_failures"], name="failure_alert_consec_idx"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(consecutive_failures__gte=0), name="failure_count_nonneg"),
        ]

    def __str__(self) -> str:
        return f"{self.symbol}: {self.consecutive_failures} consecutive failures"


class HealthStatus(models.TextChoices):
    RUNNING = "running", "Running"
    HEALTHY = "healthy", "Healthy"
    WARNING = "warning", "Warning"
    CRITICAL = "critical", "Critical"


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
        constraints = [_choices_check("status", HealthStatus, "health_status_valid")]

    def __str__(self) -> str:
        return f"health run {self.started_at:%Y-%m-%d %H:%M} {self.status}"


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
