"""Admin screens. Audit tables are read-only; lists select what they show in one query."""

from __future__ import annotations

from django.contrib import admin

from .models import (
    BackfillState,
    Candle,
    DataAnomaly,
    DuplicateRecordLog,
    HealthCheckRun,
    Instrument,
    SeriesStats,
    SymbolFailureTracking,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Instrument)
class InstrumentAdmin(admin.ModelAdmin):
    list_display = ("symbol", "asset_class", "calendar", "timeframes", "provider", "active", "updated_at")
    list_filter = ("asset_class", "provider", "active", "calendar")
    search_fields = ("symbol",)


@admin.register(Candle)
class CandleAdmin(admin.ModelAdmin):
    list_display = ("symbol", "timeframe", "ts", "open", "high", "low", "close", "volume", "source")
    list_filter = ("timeframe", "source")
    search_fields = ("symbol",)
    date_hierarchy = "ts"
    show_full_result_count = False


@admin.register(BackfillState)
class BackfillStateAdmin(admin.ModelAdmin):
    list_display = (
        "execution_id", "symbol", "timeframe", "status", "records_inserted", "records_updated",
        "invalid_bars", "retry_count", "started_at", "completed_at", "heartbeat_at",
    )
    list_filter = ("status", "timeframe", "asset_class", "provider")
    search_fields = ("symbol", "execution_id", "error_message")
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in BackfillState._meta.fields]

    def has_add_permission(self, request):
        return False


@admin.register(DataAnomaly)
class DataAnomalyAdmin(admin.ModelAdmin):
    list_display = (
        "symbol", "timeframe", "anomaly_type", "severity", "resolution_status", "period_start",
        "period_end", "affected_rows", "detected_at",
    )
    list_filter = ("severity", "resolution_status", "anomaly_type", "timeframe")
    search_fields = ("symbol", "description")
    date_hierarchy = "detected_at"


@admin.register(DuplicateRecordLog)
class DuplicateRecordLogAdmin(ReadOnlyAdmin):
    list_display = ("symbol", "timeframe", "candle_time", "duplicate_count", "kept_id", "cleaned_at")
    list_filter = ("timeframe",)
    search_fields = ("symbol",)
    date_hierarchy = "cleaned_at"


@admin.register(SymbolFailureTracking)
class SymbolFailureTrackingAdmin(admin.ModelAdmin):
    list_display = (
        "symbol", "consecutive_failures", "last_failure_at", "last_success_at", "alert_sent", "alert_sent_at",
    )
    list_filter = ("alert_sent",)
    search_fields = ("symbol",)


@admin.register(HealthCheckRun)
class HealthCheckRunAdmin(ReadOnlyAdmin):
    list_display = ("started_at", "status", "duration_ms", "alerts_sent")
    list_filter = ("status",)
    date_hierarchy = "started_at"


@admin.register(SeriesStats)
class SeriesStatsAdmin(admin.ModelAdmin):
    list_display = ("symbol", "timeframe", "first_ts", "last_ts", "bar_count", "coverage_pct", "robust_volatility")
    list_filter = ("timeframe",)
    search_fields = ("symbol",)
