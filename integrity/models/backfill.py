"""The backfill tables: one row per backfill execution (``backfill_state_persistent``) with its
lifecycle as compare-and-set state changes, and the per-symbol failure streak
(``symbol_failure_tracking``).

At most one active (pending or in_progress) execution per series is enforced by the database.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone

from ..timeframes import Timeframe
from .base import AssetClass, InvalidTransition, choices_check


class BackfillStatus(models.TextChoices):
    PENDING = "pending"
    IN_PROGRESS = "in_progress", "In progress"
    COMPLETED = "completed"
    FAILED = "failed"


ACTIVE_STATUSES = (BackfillStatus.PENDING, BackfillStatus.IN_PROGRESS)
TERMINAL_STATUSES = (BackfillStatus.COMPLETED, BackfillStatus.FAILED)


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
            choices_check("status", BackfillStatus, "backfill_status_valid"),
            choices_check("timeframe", Timeframe, "backfill_timeframe_valid"),
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
