"""The anomaly table (``data_anomalies``): findings, their vocabulary (type, severity, resolution
status) and the review lifecycle open → acknowledged → resolved."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

from ..timeframes import Timeframe
from .base import InvalidTransition, choices_check


class Severity(models.TextChoices):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class AnomalyType(models.TextChoices):
    GAP = "gap"
    OFF_CALENDAR = "off_calendar", "Bar outside trading hours"
    OUTLIER = "outlier"
    STALE = "stale", "Stale series"
    INVALID_OHLC = "invalid_ohlc", "Invalid OHLC"
    DUPLICATE = "duplicate", "Duplicate candles"
    SOURCE_MISMATCH = "source_mismatch", "Disagrees with the reference source"


class ResolutionStatus(models.TextChoices):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class ResolutionReason(models.TextChoices):
    """Why an anomaly was resolved. Only ``fixed`` lets a scan reopen the same problem (as a
    regression); the others stick: a finding with the same fingerprint is never reopened."""

    FIXED = "fixed", "Fixed (the data was repaired)"
    FALSE_POSITIVE = "false_positive", "False positive"
    EXPECTED = "expected", "Expected (a real event)"
    MISSING_AT_SOURCE = "missing_at_source", "Missing at source"


# Resolutions that no scan undoes (everything but ``fixed``).
STICKY_REASONS = (ResolutionReason.FALSE_POSITIVE, ResolutionReason.EXPECTED, ResolutionReason.MISSING_AT_SOURCE)


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
    # Blank while unresolved (and on rows resolved before reasons existed).
    resolution_reason = models.CharField(max_length=20, choices=ResolutionReason.choices, default="", blank=True)
    # How many times this problem came back after being resolved ``fixed`` (0: never).
    regressions = models.IntegerField(default=0)
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
            choices_check("severity", Severity, "anomaly_severity_valid"),
            choices_check("anomaly_type", AnomalyType, "anomaly_type_valid"),
            choices_check("resolution_status", ResolutionStatus, "anomaly_resolution_valid"),
            models.CheckConstraint(condition=Q(resolution_reason__in=["", *ResolutionReason.values]),
                                   name="anomaly_resolution_reason_valid"),
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
    def review_changes(cls, target: str, by: str, at, note: str = "", reason: str = "") -> dict:
        """The column values a move to ``target`` writes (who, when, the optional note; a resolution
        also its reason, ``fixed`` when none is given)."""
        _, by_field, at_field = cls.REVIEW_MOVES[target]
        changes = {"resolution_status": target, by_field: by, at_field: at, "updated_at": at}
        if note:
            changes["resolution_note"] = note
        if target == ResolutionStatus.RESOLVED:
            changes["resolution_reason"] = reason or ResolutionReason.FIXED
        elif reason:
            raise ValueError("only a resolution has a reason")
        return changes

    def _review(self, target: str, by: str, note: str, reason: str = "") -> None:
        changes = self.review_changes(target, by, timezone.now(), note, reason)
        allowed_from = self.REVIEW_MOVES[target][0]
        updated = DataAnomaly.objects.filter(pk=self.pk, resolution_status__in=allowed_from).update(**changes)
        if updated != 1:
            current = DataAnomaly.objects.filter(pk=self.pk).values_list("resolution_status", flat=True).first()
            raise InvalidTransition(f"anomaly {self.pk} is {current}; cannot move it to {target}")
        for key, value in changes.items():
            setattr(self, key, value)

    def acknowledge(self, by: str = "", note: str = "") -> None:
        self._review(ResolutionStatus.ACKNOWLEDGED, by, note)

    def resolve(self, by: str = "", note: str = "", reason: str = ResolutionReason.FIXED) -> None:
        """Resolve with a reason (``ResolutionReason``); any reason but ``fixed`` is never reopened."""
        if reason not in ResolutionReason.values:
            raise ValueError(f"unknown resolution reason {reason!r}; expected one of "
                             f"{', '.join(ResolutionReason.values)}")
        self._review(ResolutionStatus.RESOLVED, by, note, reason)
