"""What ran: backfill executions (retry, reap), symbol failure tracking (reset), health-check runs.

Executions and health runs are audit tables: read-only here, changed only through the services.
An execution's page is also found by its execution id (``/admin/integrity/backfillstate/<uuid>/change/``,
what ``execution_link`` links) and links the anomalies it produced and its symbol's failure tracking.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Q
from django.urls import reverse
from django.utils.html import format_html

from ..backfill import reap_dead_backfills
from ..exports import BACKFILLS
from ..failures import reset_symbol_failures
from ..models import (
    ACTIVE_STATUSES,
    BackfillState,
    BackfillStatus,
    DataAnomaly,
    HealthCheckRun,
    SymbolFailureTracking,
)
from .base import (
    IntegrityModelAdmin,
    ReadOnlyAdmin,
    UTCDateRangeFilter,
    backfill_by_execution_id,
    execution_link,
    export_csv_action,
    export_xlsx_action,
    pretty_json,
    report_action,
    request_backfills,
    shortened,
)
from .queue import cancel_selected_pending

# The list shows this many characters of an execution's error (all of it on hover and on its page).
ERROR_SHOWN = 120


@admin.register(BackfillState)
class BackfillStateAdmin(IntegrityModelAdmin):
    list_display = (
        "execution", "symbol", "timeframe", "status", "started_at", "completed_at", "records_inserted",
        "records_updated", "invalid_bars", "retry_count", "short_error",
    )
    list_filter = ("status", "timeframe", "asset_class", "provider", ("created_at", UTCDateRangeFilter),
                   ("started_at", UTCDateRangeFilter))
    search_fields = ("symbol", "execution_id", "error_message")
    date_hierarchy = "created_at"
    readonly_fields = [*(f.name if f.name != "details" else "details_shown" for f in BackfillState._meta.fields),
                       "anomalies", "quarantined_bars", "failure_tracking"]
    actions = ["retry_failed", "reap_dead", "cancel_pending", "export_csv", "export_xlsx"]
    export_csv = export_csv_action(BACKFILLS, "backfill executions")
    export_xlsx = export_xlsx_action(BACKFILLS, "backfill executions")

    def get_object(self, request, object_id, from_field=None):
        """By primary key, or by execution id (the links ``execution_link`` makes)."""
        return backfill_by_execution_id(object_id) or super().get_object(request, object_id, from_field)

    @admin.display(description="execution", ordering="execution_id")
    def execution(self, obj):
        """Its first 8 characters, linking to its page (the whole id on hover)."""
        return execution_link(obj.execution_id)

    @admin.display(description="details")
    def details_shown(self, obj):
        return pretty_json(obj.details)

    @admin.display(description="anomalies it produced")
    def anomalies(self, obj):
        count = DataAnomaly.objects.filter(execution_id=obj.execution_id).count()
        if not count:
            return "none"
        url = (reverse("admin:integrity_dataanomaly_changelist")
               + f"?execution_id={obj.execution_id}&resolution_status__exact=all")
        return format_html('<a href="{}">{} anomal{}</a>', url, count, "y" if count == 1 else "ies")

    @admin.display(description="quarantined bars")
    def quarantined_bars(self, obj):
        if not obj.invalid_bars:
            return "none"
        url = reverse("admin:integrity_rejectedcandle_changelist") + f"?execution_id={obj.execution_id}"
        return format_html('<a href="{}">bars it refused</a>', url)

    @admin.display(description="failure tracking of the symbol")
    def failure_tracking(self, obj):
        tracking = SymbolFailureTracking.objects.filter(symbol=obj.symbol).first()
        if tracking is None:
            return f"no failures recorded for {obj.symbol}"
        url = reverse("admin:integrity_symbolfailuretracking_change", args=[tracking.pk])
        return format_html('<a href="{}">{}: {} consecutive failure(s)</a>', url, tracking.symbol,
                           tracking.consecutive_failures)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # executions change only through the service (terminal states are final)

    def has_delete_permission(self, request, obj=None):
        return False  # the execution history is the audit trail of what ran, when, and why it failed

    @admin.display(description="error", ordering="error_message")
    def short_error(self, obj):
        return shortened(obj.error_message, ERROR_SHOWN)

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
        request_backfills(self, request, series)

    @admin.action(description="Reap dead backfills (every execution whose worker is gone, as the health job does)",
                  permissions=["retry"])
    def reap_dead(self, request, queryset):
        reaped = reap_dead_backfills()
        done = [f"{s.symbol} {s.timeframe} ({s.execution_id}): {s.error_message}" for s in reaped]
        reaped_ids = {s.pk for s in reaped}
        refused = [
            f"{s.symbol} {s.timeframe} ({s.execution_id}) not reaped: it is {s.status} and its worker is alive "
            f"(heartbeat within {settings.BACKFILL_HEARTBEAT_TIMEOUT_SECONDS}s)"
            for s in queryset.filter(status__in=ACTIVE_STATUSES).exclude(pk__in=reaped_ids)[:20]
        ]
        finished = queryset.exclude(status__in=ACTIVE_STATUSES).count()
        if finished:
            refused.append(f"{finished} selected execution(s) are already finished: nothing to reap")
        if not done and not refused:
            refused.append("no dead backfills: every active execution has a live worker")
        report_action(self, request, done, refused, "reaped")

    @admin.action(description="Cancel selected pending backfills (not yet started by a worker)",
                  permissions=["retry"])
    def cancel_pending(self, request, queryset):
        cancel_selected_pending(self, request, queryset)

    def has_retry_permission(self, request):
        return request.user.has_perm("integrity.change_backfillstate")


@admin.register(SymbolFailureTracking)
class SymbolFailureTrackingAdmin(IntegrityModelAdmin):
    list_display = (
        "symbol", "consecutive_failures", "last_failure_at", "last_success_at", "alert_sent", "alert_sent_at",
    )
    list_filter = ("alert_sent", "last_failure_at", "last_success_at")
    search_fields = ("symbol", "last_error")
    date_hierarchy = "last_failure_at"
    readonly_fields = [f.name for f in SymbolFailureTracking._meta.fields]
    actions = ["reset"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Reset failure tracking of selected symbols", permissions=["change"])
    def reset(self, request, queryset):
        failing = queryset.filter(Q(consecutive_failures__gt=0) | Q(alert_sent=True))
        done = [s for s in failing.values_list("symbol", flat=True) if reset_symbol_failures(s)]
        refused = [f"{s} not reset: it has no consecutive failures and no alert outstanding"
                   for s in queryset.filter(consecutive_failures=0, alert_sent=False)
                   .values_list("symbol", flat=True)[:20]]
        report_action(self, request, done, refused, "reset")


@admin.register(HealthCheckRun)
class HealthCheckRunAdmin(ReadOnlyAdmin):
    list_display = ("started_at", "status", "duration_ms", "alerts_sent", "finished_at")
    list_filter = ("status", "started_at")
    date_hierarchy = "started_at"
    fields = readonly_fields = ("started_at", "finished_at", "duration_ms", "status", "alerts_sent", "results_shown",
                                "errors_shown")

    @admin.display(description="results")
    def results_shown(self, obj):
        return pretty_json(obj.results)

    @admin.display(description="errors")
    def errors_shown(self, obj):
        return pretty_json(obj.errors)
