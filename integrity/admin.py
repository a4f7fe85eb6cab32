"""Admin screens: review lists, actions that call the service layer, a dashboard, anomaly charts.

Audit tables (duplicate log, health runs, finished backfills) are read-only. No model has foreign
keys, so every list is one query plus the paginator's count.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import Count
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.safestring import mark_safe

from .backfill import BackfillError, BackfillRefused, reap_dead_backfills, request_backfill
from .charts import anomaly_chart_svg
from .failures import reset_symbol_failures
from .models import (
    ACTIVE_STATUSES,
    BackfillState,
    BackfillStatus,
    Candle,
    DataAnomaly,
    DuplicateRecordLog,
    HealthCheckRun,
    Instrument,
    InvalidTransition,
    ResolutionStatus,
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


def _report(modeladmin, request, done: list[str], refused: list[str], verb: str) -> None:
    if done:
        modeladmin.message_user(request, f"{verb}: {len(done)} — {', '.join(done[:20])}", messages.SUCCESS)
    for reason in refused[:20]:
        modeladmin.message_user(request, reason, messages.WARNING)
    if not done and not refused:
        modeladmin.message_user(request, "nothing to do", messages.INFO)


def _request_backfills(modeladmin, request, series: list[tuple[str, str, object, object]]) -> None:
    done, refused = [], []
    for symbol, timeframe, start, end in series:
        try:
            state = request_backfill(symbol, timeframe, start=start, end=end,
                                     requested_by=f"admin:{request.user.get_username()}")
            done.append(f"{symbol} {timeframe} ({state.execution_id})")
        except (BackfillRefused, BackfillError) as exc:
            refused.append(f"{symbol} {timeframe} refused: {exc}")
    _report(modeladmin, request, done, refused, "backfills queued")


@admin.register(Instrument)
class InstrumentAdmin(admin.ModelAdmin):
    list_display = ("symbol", "asset_class", "calendar", "timeframes", "provider", "active", "updated_at")
    list_filter = ("asset_class", "provider", "active", "calendar")
    search_fields = ("symbol",)
    actions = ["backfill_now"]

    @admin.action(description="Backfill selected instruments now (every timeframe)", permissions=["change"])
    def backfill_now(self, request, queryset):
        series = [(i.symbol, tf, None, None) for i in queryset for tf in i.timeframes]
        _request_backfills(self, request, series)


@admin.register(Candle)
class CandleAdmin(admin.ModelAdmin):
    list_display = ("symbol", "timeframe", "ts", "open", "high", "low", "close", "volume", "source", "ingested_at")
    list_filter = ("timeframe", "source")
    search_fields = ("symbol",)
    date_hierarchy = "ts"
    show_full_result_count = False  # the table is large: no full COUNT(*) on every page


@admin.register(BackfillState)
class BackfillStateAdmin(admin.ModelAdmin):
    list_display = (
        "execution_id", "symbol", "timeframe", "status", "records_inserted", "records_updated",
        "invalid_bars", "retry_count", "started_at", "completed_at", "heartbeat_at", "short_error",
    )
    list_filter = ("status", "timeframe", "asset_class", "provider", "created_at")
    search_fields = ("symbol", "execution_id", "error_message")
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in BackfillState._meta.fields]
    actions = ["retry_failed", "reap_dead"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # executions change only through the service (terminal states are final)

    @admin.display(description="error")
    def short_error(self, obj):
        return (obj.error_message or "")[:80]

    @admin.action(description="Retry selected failed backfills (resume from checkpoint)", permissions=["retry"])
    def retry_failed(self, request, queryset):
        failed = queryset.filter(status=BackfillStatus.FAILED)
        skipped = queryset.exclude(status=BackfillStatus.FAILED).count()
        seen, series = set(), []
        for state in failed.order_by("-created_at"):
            if (state.symbol, state.timeframe) not in seen:
                seen.add((state.symbol, state.timeframe))
                series.append((state.symbol, state.timeframe, state.range_start, state.range_end))
        if skipped:
            self.message_user(request, f"{skipped} selected execution(s) are not failed and were skipped",
                              messages.WARNING)
        _request_backfills(self, request, series)

    @admin.action(description="Reap dead backfills (heartbeat timed out)", permissions=["retry"])
    def reap_dead(self, request, queryset):
        reaped = reap_dead_backfills()
        _report(self, request, [f"{s.symbol} {s.timeframe}" for s in reaped], [], "reaped")

    def has_retry_permission(self, request):
        return request.user.has_perm("integrity.change_backfillstate")


@admin.register(DataAnomaly)
class DataAnomalyAdmin(admin.ModelAdmin):
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

    def _review(self, request, queryset, method: str, verb: str):
        done, refused = [], []
        for anomaly in queryset:
            try:
                getattr(anomaly, method)(by=request.user.get_username())
                done.append(f"#{anomaly.pk}")
            except InvalidTransition as exc:
                refused.append(str(exc))
        _report(self, request, done, refused, verb)

    @admin.action(description="Acknowledge selected anomalies", permissions=["change"])
    def acknowledge(self, request, queryset):
        self._review(request, queryset, "acknowledge", "acknowledged")

    @admin.action(description="Resolve selected anomalies", permissions=["change"])
    def resolve(self, request, queryset):
        self._review(request, queryset, "resolve", "resolved")


@admin.register(DuplicateRecordLog)
class DuplicateRecordLogAdmin(ReadOnlyAdmin):
    list_display = ("symbol", "timeframe", "candle_time", "duplicate_count", "kept_id", "deleted", "cleaned_at")
    list_filter = ("timeframe", "cleaned_at")
    search_fields = ("symbol",)
    date_hierarchy = "cleaned_at"

    @admin.display(description="deleted ids")
    def deleted(self, obj):
        return ", ".join(str(i) for i in (obj.duplicate_ids or [])[:10])


@admin.register(SymbolFailureTracking)
class SymbolFailureTrackingAdmin(admin.ModelAdmin):
    list_display = (
        "symbol", "consecutive_failures", "last_failure_at", "last_success_at", "alert_sent", "alert_sent_at",
    )
    list_filter = ("alert_sent", "last_failure_at")
    search_fields = ("symbol", "last_error")
    readonly_fields = [f.name for f in SymbolFailureTracking._meta.fields]
    actions = ["reset"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Reset failure tracking of selected symbols", permissions=["change"])
    def reset(self, request, queryset):
        symbols = list(queryset.values_list("symbol", flat=True))
        for symbol in symbols:
            reset_symbol_failures(symbol)
        _report(self, request, symbols, [], "reset")


@admin.register(HealthCheckRun)
class HealthCheckRunAdmin(ReadOnlyAdmin):
    list_display = ("started_at", "status", "duration_ms", "alerts_sent", "finished_at")
    list_filter = ("status", "started_at")
    date_hierarchy = "started_at"


@admin.register(SeriesStats)
class SeriesStatsAdmin(ReadOnlyAdmin):
    list_display = ("symbol", "timeframe", "first_ts", "last_ts", "bar_count", "expected_bars", "coverage_pct",
                    "robust_volatility", "last_scan_at")
    list_filter = ("timeframe",)
    search_fields = ("symbol",)


# --- dashboard ---------------------------------------------------------------------------------


def dashboard_context() -> dict:
    open_anomalies = DataAnomaly.objects.exclude(resolution_status=ResolutionStatus.RESOLVED)
    latest_run = HealthCheckRun.objects.order_by("-started_at").first()
    stale = (latest_run.results or {}).get("stale_series", []) if latest_run else []
    return {
        "by_severity": list(open_anomalies.values("severity").annotate(n=Count("id")).order_by("severity")),
        "by_type": list(open_anomalies.values("anomaly_type").annotate(n=Count("id")).order_by("anomaly_type")),
        "open_total": open_anomalies.count(),
        "stale_series": stale,
        "failing": list(SymbolFailureTracking.objects.filter(consecutive_failures__gt=0)
                        .order_by("-consecutive_failures")[:50]),
        "active_backfills": list(BackfillState.objects.filter(status__in=ACTIVE_STATUSES).order_by("created_at")[:50]),
        "latest_run": latest_run,
        "coverage": list(SeriesStats.objects.order_by("coverage_pct", "symbol")[:100]),
    }


def dashboard_view(request):
    context = {**admin.site.each_context(request), "title": "Market-data integrity dashboard",
               **dashboard_context()}
    return TemplateResponse(request, "admin/integrity/dashboard.html", context)


_original_get_urls = admin.site.get_urls


def _get_urls():
    return [path("integrity/dashboard/", admin.site.admin_view(dashboard_view), name="integrity-dashboard"),
            *_original_get_urls()]


admin.site.get_urls = _get_urls
admin.site.index_template = "admin/integrity/index.html"
admin.site.site_header = "marketdata-integrity"
admin.site.site_title = "marketdata-integrity"


