"""Anomaly review (acknowledge, resolve, the chart around an anomaly) and the duplicate-cleanup log."""

from __future__ import annotations

from django.contrib import admin, messages
from django.utils.safestring import mark_safe

from ..charts import anomaly_chart_svg
from ..models import DataAnomaly, DuplicateRecordLog, ResolutionStatus
from ..quality.review import review_anomalies
from .base import IntegrityModelAdmin, ReadOnlyAdmin


@admin.register(DataAnomaly)
class DataAnomalyAdmin(IntegrityModelAdmin):
    list_display = (
        "symbol", "timeframe", "anomaly_type", "severity", "resolution_status", "period_start",
        "period_end", "affected_rows", "detected_at",
    )
    list_filter = ("severity", "resolution_status", "anomaly_type", "timeframe", "detected_at")
    search_fields = ("symbol", "description")
    date_hierarchy = "detected_at"
    actions = ["acknowledge", "resolve"]
    readonly_fields = [
        "symbol", "timeframe", "anomaly_type", "severity", "description", "affected_rows", "period_start",
        "period_end", "detected_at", "last_seen_at", "fingerprint", "details", "execution_id",
        "resolution_status", "acknowledged_by", "acknowledged_at", "resolved_by", "resolved_at", "chart",
    ]
    fields = ["chart", *readonly_fields[:-1], "resolution_note"]

    def has_add_permission(self, request):
        return False

    @admin.display(description="candles around the anomaly")
    def chart(self, obj):
        return mark_safe(anomaly_chart_svg(obj))  # noqa: S308 — our own SVG, values escaped in charts.py

    def _review(self, request, queryset, target: str):
        """The selection moves in one locked transaction ("select all" may be thousands of rows), and
        the one message says what moved and what was refused and why, as split before the move."""
        outcome = review_anomalies(queryset, target, by=request.user.get_username())
        self.message_user(request, outcome.summary(), messages.WARNING if outcome.refused else messages.SUCCESS)

    @admin.action(description="Acknowledge selected anomalies", permissions=["change"])
    def acknowledge(self, request, queryset):
        self._review(request, queryset, ResolutionStatus.ACKNOWLEDGED)

    @admin.action(description="Resolve selected anomalies", permissions=["change"])
    def resolve(self, request, queryset):
        self._review(request, queryset, ResolutionStatus.RESOLVED)


@admin.register(DuplicateRecordLog)
class DuplicateRecordLogAdmin(ReadOnlyAdmin):
    list_display = ("symbol", "timeframe", "candle_time", "duplicate_count", "kept_id", "kept_by", "deleted",
                    "cleaned_at")
    list_filter = ("timeframe", "kept_by", "cleaned_at")
    search_fields = ("symbol",)
    date_hierarchy = "cleaned_at"

    @admin.display(description="deleted ids")
    def deleted(self, obj):
        return ", ".join(str(i) for i in (obj.duplicate_ids or [])[:10])
