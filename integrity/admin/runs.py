"""What ran: backfill executions (retry, reap, cancel), symbol failure tracking (reset), health-check runs.

Executions and health runs are audit tables: read-only here, changed only through the services; failure
tracking is written by the backfills and reset by its button or action, never edited or deleted here.
An execution's page is also found by its execution id (``/admin/integrity/backfillstate/<uuid>/change/``,
what ``execution_link`` links), links the anomalies it produced, the anomaly it repairs and its symbol's
failure tracking, and carries "Retry" (failed) and "Cancel" (pending) buttons.
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Q
from django.urls import reverse
from django.utils.html import format_html

from ..backfill import BackfillError, BackfillRefused, NotCancellable, cancel_backfill, reap_dead_backfills
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
from ..repair import repaired_anomaly_id
from ..tasks import request_backfill
from .base import (
    LISTED,
    IntegrityModelAdmin,
    ReadOnlyAdmin,
    UTCDateRangeFilter,
    backfill_by_execution_id,
    execution_link,
    export_csv_action,
    export_xlsx_action,
    pretty_json,
    queue_backfills,
    report_action,
    shortened,
)
from .object_actions import ActionResult, ObjectActionsMixin, ServiceOwnedAdmin, object_action
from .queue import cancel_selected_pending, no_worker_sentence


def _not_failed(state) -> str | None:
    if state.status != BackfillStatus.FAILED:
        return f"it is {state.status}; only a failed execution is retried"
    return None


def _not_pending(state) -> str | None:
    if state.status != BackfillStatus.PENDING:
        return (f"it is {state.status}; only a pending execution (not yet started by a worker) can be cancelled"
                + (": stop its worker (SIGTERM) to end it" if state.status == BackfillStatus.IN_PROGRESS else ""))
    return None


class CancelForm(forms.Form):
    reason = forms.CharField(required=False, max_length=500, help_text="Kept on the execution with who and when.")

# An execution's page: what it is and how it ended first (and, for a repair, the anomaly it repairs),
# then its links, then the rest of its columns; ``details`` once, pretty-printed.
EXECUTION_FIRST = ("execution_id", "symbol", "timeframe", "status", "repairs", "error_message", "started_at",
                   "completed_at", "records_inserted", "records_updated", "invalid_bars")
# The list shows this many characters of an execution's error (all of it on hover and on its page).
ERROR_SHOWN = 120


@admin.register(BackfillState)
class BackfillStateAdmin(ObjectActionsMixin, IntegrityModelAdmin):
    list_display = (
        "execution", "symbol", "timeframe", "status", "started_at", "completed_at", "records_inserted",
        "records_updated", "invalid_bars", "retry_count", "short_error",
    )
    list_filter = ("status", "timeframe", "asset_class", "provider", ("created_at", UTCDateRangeFilter),
                   ("started_at", UTCDateRangeFilter))
    search_fields = ("symbol", "execution_id", "error_message")
    date_hierarchy = "created_at"
    readonly_fields = fields = [
        *EXECUTION_FIRST, "anomalies", "quarantined_bars", "failure_tracking",
        *(f.name for f in BackfillState._meta.fields if f.name not in {*EXECUTION_FIRST, "id", "details"}),
        "details_shown"]
    actions = ["retry_failed", "reap_dead", "cancel_pending", "export_csv", "export_xlsx"]
    object_actions = ("retry_this", "cancel_this")
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

    @admin.display(description="anomaly it repairs")
    def repairs(self, obj):
        pk = repaired_anomaly_id(obj)
        if pk is None:
            return "none (a backfill, not a repair)"
        anomaly = DataAnomaly.objects.filter(pk=pk).first()
        if anomaly is None:
            return f"anomaly #{pk} (deleted)"
        url = reverse("admin:integrity_dataanomaly_change", args=[pk])
        return format_html('<a class="repaired-anomaly" href="{}">#{} {} {} {}</a> — now {}{}', url, pk,
                           anomaly.anomaly_type, anomaly.symbol, anomaly.timeframe, anomaly.resolution_status,
                           f" ({anomaly.resolution_reason})" if anomaly.resolution_reason else "")

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
        refused = [f"{s.symbol} {s.timeframe} ({s.execution_id}) not retried: {_not_failed(s)}"
                   for s in queryset.exclude(status=BackfillStatus.FAILED).order_by("created_at")]
        seen, series = set(), []
        for state in queryset.filter(status=BackfillStatus.FAILED).order_by("-created_at"):
            if (state.symbol, state.timeframe) in seen:
                refused.append(f"{state.symbol} {state.timeframe} ({state.execution_id}) not retried: a newer "
                               "failed execution of the series is retried instead")
                continue
            seen.add((state.symbol, state.timeframe))
            series.append((state.symbol, state.timeframe, state.range_start, state.range_end))
        done, busy = queue_backfills(request, series)
        report_action(self, request, done, refused + busy, "backfills queued", queued=True)

    @object_action(label="Retry", url="retry", permission="retry", unavailable=_not_failed,
                   explain=lambda s: f"Queue a new backfill of {s.symbol} {s.timeframe} over this execution's range "
                                     f"({s.range_start or 'from the newest stored bar'} to {s.range_end or 'now'}); "
                                     "it resumes from what is stored.")
    def retry_this(self, request, obj, data) -> ActionResult:
        try:
            state = request_backfill(obj.symbol, obj.timeframe, start=obj.range_start, end=obj.range_end,
                                     requested_by=f"admin:{request.user.get_username()}")
        except (BackfillRefused, BackfillError) as exc:
            return ActionResult(f"{obj.symbol} {obj.timeframe} not retried: {exc}", messages.WARNING)
        note = no_worker_sentence()
        return ActionResult(f"Retry of {obj.execution_id} queued as execution {state.execution_id}."
                            + (f" {note}" if note else ""), messages.WARNING if note else messages.SUCCESS,
                            reverse("admin:integrity_backfillstate_change", args=[str(state.execution_id)]))

    @object_action(label="Cancel", url="cancel", permission="retry", unavailable=_not_pending, form=CancelForm,
                   explain=lambda s: f"Cancel this pending backfill of {s.symbol} {s.timeframe} before a worker starts "
                                     "it: it ends failed (\"cancelled\"), its series is free again, and it does not "
                                     "count as a failure of the symbol.")
    def cancel_this(self, request, obj, data) -> ActionResult:
        try:
            cancel_backfill(obj.execution_id, by=f"admin:{request.user.get_username()}",
                            reason=data.get("reason") or "cancelled in the admin")
        except NotCancellable as exc:
            return ActionResult(f"Not cancelled: {exc}", messages.WARNING)
        return ActionResult(f"Cancelled execution {obj.execution_id} ({obj.symbol} {obj.timeframe}).")

    @admin.action(description="Reap dead backfills (every execution whose worker is gone, as the health job does)",
                  permissions=["retry"])
    def reap_dead(self, request, queryset):
        reaped = reap_dead_backfills()
        done = [f"{s.symbol} {s.timeframe} ({s.execution_id}): {s.error_message}" for s in reaped]
        reaped_ids = {s.pk for s in reaped}
        refused = [
            f"{s.symbol} {s.timeframe} ({s.execution_id}) not reaped: it is {s.status} and its worker is alive "
            f"(heartbeat within {settings.BACKFILL_HEARTBEAT_TIMEOUT_SECONDS}s)"
            for s in queryset.filter(status__in=ACTIVE_STATUSES).exclude(pk__in=reaped_ids)
        ]
        finished = queryset.exclude(status__in=ACTIVE_STATUSES).exclude(pk__in=reaped_ids)
        alive = len(refused)
        refused += [f"{s.symbol} {s.timeframe} ({s.execution_id}) not reaped: it has finished ({s.status})"
                    for s in finished.order_by("created_at")[:LISTED]]
        report_action(self, request, done, refused, "reaped", refused_total=alive + finished.count())

    @admin.action(description="Cancel selected pending backfills (not yet started by a worker)",
                  permissions=["retry"])
    def cancel_pending(self, request, queryset):
        report_action(self, request, *cancel_selected_pending(request, queryset), "cancelled")

    def has_retry_permission(self, request):
        return request.user.has_perm("integrity.change_backfillstate")


@admin.register(SymbolFailureTracking)
class SymbolFailureTrackingAdmin(ServiceOwnedAdmin, IntegrityModelAdmin):
    list_display = (
        "symbol", "consecutive_failures", "last_failure_at", "last_success_at", "alert_sent", "alert_sent_at",
    )
    list_filter = ("alert_sent", "last_failure_at", "last_success_at")
    search_fields = ("symbol", "last_error")
    date_hierarchy = "last_failure_at"
    readonly_fields = [f.name for f in SymbolFailureTracking._meta.fields]
    actions = ["reset"]
    object_actions = ("reset_this",)

    @admin.action(description="Reset failure tracking of selected symbols", permissions=["change"])
    def reset(self, request, queryset):
        # Split before writing: a reset row would otherwise count as "nothing to reset" too.
        healthy = list(queryset.filter(consecutive_failures=0, alert_sent=False).values_list("symbol", flat=True))
        failing = list(queryset.filter(Q(consecutive_failures__gt=0) | Q(alert_sent=True))
                       .values_list("symbol", flat=True))
        done = [s for s in failing if reset_symbol_failures(s)]
        refused = [f"{s} not reset: {_nothing_to_reset(None)}" for s in healthy]
        report_action(self, request, done, refused, "reset")

    @object_action(label="Reset", url="reset", unavailable=lambda t: _nothing_to_reset(t),
                   explain=lambda t: f"Zero the consecutive failures of {t.symbol} and re-arm its alert (the next "
                                     "failures alert again at the threshold).")
    def reset_this(self, request, obj, data) -> ActionResult:
        if reset_symbol_failures(obj.symbol):
            return ActionResult(f"reset: {obj.symbol} (consecutive failures 0, alert re-armed).")
        return ActionResult(f"{obj.symbol} not reset: its failure tracking is gone", messages.WARNING)


def _nothing_to_reset(tracking) -> str | None:
    if tracking is None or (not tracking.consecutive_failures and not tracking.alert_sent):
        return "it has no consecutive failures and no alert outstanding"
    return None


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
