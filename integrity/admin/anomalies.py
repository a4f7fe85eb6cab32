"""Anomaly review (acknowledge, resolve with a reason, the chart around an anomaly, "Re-fetch this
range", links to what the anomaly is about) and the duplicate-cleanup log; both export as CSV.

An anomaly changes only through the review service: the bulk actions of the list and the buttons of its
page (Acknowledge, Resolve with a reason and a note, Re-fetch this range: ``integrity.admin.object_actions``).
Its page has no Save and no Delete: a note is written with the button that acts on it, so a typed note
can never look like a resolution that did not happen.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import mark_safe

from ..backfill import BackfillError, BackfillRefused
from ..charts import anomaly_chart_svg
from ..exports import ANOMALIES, DUPLICATES
from ..models import (
    AnomalyType,
    BackfillState,
    BackfillStatus,
    DataAnomaly,
    DuplicateRecordLog,
    Instrument,
    ResolutionReason,
    ResolutionStatus,
)
from ..prices import prices_shown
from ..quality.review import review_anomalies
from ..reconcile import ReconcileError, reference_range, repair_from_reference
from ..repair import RepairError, repair_range
from ..tasks import request_repair
from ..timeframes import timeframe_delta
from .base import (
    ExecutionFilter,
    IntegrityModelAdmin,
    ReadOnlyAdmin,
    UTCDateRangeFilter,
    execution_link,
    export_csv_action,
    export_xlsx_action,
    pretty_json,
    report_action,
    severity_badge,
    shortened,
)
from .object_actions import ActionResult, ServiceOwnedAdmin, object_action
from .queue import no_worker_sentence
from .series import series_url

# The candles linked from an anomaly: its period and this many bars either side.
WINDOW_BARS = 10
# Repairs one "Re-fetch this range" bulk action queues (each claims a series and queues a task).
REFETCH_LIMIT = 1000
# The list shows this many characters of a description (all of it on hover and on the anomaly's page).
DESCRIPTION_SHOWN = 60


class ResolutionStatusFilter(admin.SimpleListFilter):
    """By status; "All" is ``resolution_status__exact=all`` (or no status in a query). The list opened
    bare is sent to the open ones (``DataAnomalyAdmin.changelist_view``): the page's URL names the
    status, so an action or "select all" acts on the rows shown. The parameter is the one Django's own
    field filter used: existing links (the dashboard's) keep working."""

    title = "status"
    parameter_name = "resolution_status__exact"
    ALL = "all"

    def lookups(self, request, model_admin):
        return [*ResolutionStatus.choices, (self.ALL, "All")]

    def queryset(self, request, queryset):
        value = self.value()
        if value in (None, self.ALL):
            return queryset
        if value not in ResolutionStatus.values:
            raise IncorrectLookupParameters(
                f"resolution_status__exact {value[:40]!r} is not a status: use one of "
                f"{', '.join([*ResolutionStatus.values, self.ALL])}")
        return queryset.filter(resolution_status=value)

    def choices(self, changelist):
        # No choice that drops the parameter (that would send the list back to "open"): "All" has a value.
        counts = self.get_facet_queryset(changelist) if changelist.add_facets else None
        chosen = self.value() or self.ALL
        for i, (lookup, title) in enumerate(self.lookup_choices):
            if counts is not None:
                title = f"{title} ({counts[f'{i}__c']})"
            yield {"selected": chosen == lookup, "query_string": changelist.get_query_string(
                {self.parameter_name: lookup}), "display": title}


NOTE_HELP = "Kept on the anomaly, with who and when."


class AcknowledgeForm(forms.Form):
    note = forms.CharField(required=False, max_length=10_000, help_text=NOTE_HELP,
                           widget=forms.Textarea(attrs={"rows": 3, "cols": 70}))


class ResolveForm(AcknowledgeForm):
    reason = forms.ChoiceField(
        choices=ResolutionReason.choices, widget=forms.RadioSelect,
        help_text="Any reason but \"fixed\" is final: no scan reopens the problem; a fixed problem that comes "
                  "back reopens as a regression.")
    field_order = ["reason", "note"]


def _not_open(anomaly) -> str | None:
    if anomaly.resolution_status != ResolutionStatus.OPEN:
        return f"it is {anomaly.resolution_status}; only open anomalies can be acknowledged"
    return None


def _resolved(anomaly) -> str | None:
    if anomaly.resolution_status == ResolutionStatus.RESOLVED:
        return f"it is already resolved ({anomaly.resolution_reason or 'no reason recorded'})"
    return None


def _not_repairable(anomaly) -> str | None:
    try:
        repair_range(anomaly)
    except RepairError as exc:
        return str(exc)
    return None


class ReferenceRepairForm(forms.Form):
    note = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 80}), max_length=2000,
                           help_text="required: why the reference's bars are the right ones (kept on the "
                                     "execution and the anomaly)")


def _no_reference_repair(anomaly) -> str | None:
    try:
        reference_range(anomaly)
    except ReconcileError as exc:
        return str(exc)
    return None


def _explain_reference_repair(anomaly) -> str:
    start, end = reference_range(anomaly)
    return (f"Write the reference source's bars of {anomaly.symbol} {anomaly.timeframe} from {start:%Y-%m-%d %H:%M} "
            f"to {end:%Y-%m-%d %H:%M} UTC over the stored ones, as a tracked backfill that keeps your note, then "
            "resolve this anomaly \"fixed\". Nothing is taken from the reference without this.")


def _explain_repair(anomaly) -> str:
    start, end = repair_range(anomaly)
    return (f"Re-fetch {anomaly.symbol} {anomaly.timeframe} from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC "
            "from the instrument's provider, then re-check the range: fixed bars resolve the anomaly \"fixed\", "
            "bars the source lacks resolve it \"missing at source\", a value the source confirms leaves it open "
            "for you to decide.")


@admin.register(DataAnomaly)
class DataAnomalyAdmin(ServiceOwnedAdmin, IntegrityModelAdmin):
    list_display = (
        "symbol", "timeframe", "anomaly_type", "severity_shown", "status_shown", "period_start", "period_end",
        "affected_rows", "detected_at", "description_short",
    )
    list_filter = ("severity", ResolutionStatusFilter, "resolution_reason", "anomaly_type", "timeframe", "detected_at",
                   ("detected_at", UTCDateRangeFilter), ("period_start", UTCDateRangeFilter), ExecutionFilter)
    search_fields = ("symbol", "description")
    date_hierarchy = "detected_at"
    actions = ["acknowledge", "resolve", "resolve_false_positive", "resolve_expected", "resolve_missing_at_source",
               "refetch", "export_csv", "export_xlsx"]
    readonly_fields = [
        "symbol", "instrument", "timeframe", "candles", "anomaly_type", "severity_shown", "description",
        "affected_rows", "period_start", "period_end", "detected_at", "last_seen_at", "fingerprint", "details_shown",
        "executions",
        "quarantined_bars",
        "resolution_status", "resolution_reason", "regressions", "acknowledged_by", "acknowledged_at",
        "resolved_by", "resolved_at", "resolution_note", "chart",
    ]
    fields = ["chart", *readonly_fields[:-1]]
    object_actions = ("acknowledge_this", "resolve_this", "repair_this", "take_reference_this")

    export_csv = export_csv_action(ANOMALIES, "anomalies")
    export_xlsx = export_xlsx_action(ANOMALIES, "anomalies")

    def changelist_view(self, request, extra_context=None):
        """Opened bare (the menu, a bookmark), the list shows the open anomalies: a redirect to
        ``?resolution_status__exact=open``. A query is taken as given: one without a status (a
        search, a link from elsewhere) covers every status, and the status filter says "All"."""
        if request.method == "GET" and not request.GET:
            return redirect(f"{request.path}?{ResolutionStatusFilter.parameter_name}={ResolutionStatus.OPEN}")
        return super().changelist_view(request, extra_context)

    # --- how the columns read -------------------------------------------------------------------

    @admin.display(description="severity", ordering="severity")
    def severity_shown(self, obj):
        return severity_badge(obj.severity, obj.get_severity_display())

    @admin.display(description="status", ordering="resolution_status")
    def status_shown(self, obj):
        """The status, the reason it was resolved with, and how often it came back."""
        extra = [obj.resolution_reason.replace("_", " ")] if obj.resolution_reason else []
        if obj.regressions:
            extra.append(f"came back {obj.regressions}×")
        return format_html('<span class="status-{}">{}</span>{}', obj.resolution_status,
                           obj.get_resolution_status_display(), f" ({', '.join(extra)})" if extra else "")

    @admin.display(description="description", ordering="description")
    def description_short(self, obj):
        return shortened(obj.description, DESCRIPTION_SHOWN)

    @admin.display(description="details")
    def details_shown(self, obj):
        """The details, pretty-printed, prices at the instrument's precision."""
        instrument = Instrument.objects.filter(symbol=obj.symbol).values("price_decimals", "asset_class").first()
        instrument = instrument or {"price_decimals": None, "asset_class": None}
        return pretty_json(prices_shown(obj.details, instrument["price_decimals"], instrument["asset_class"]))

    @admin.display(description="candles around the anomaly")
    def chart(self, obj):
        svg = mark_safe(anomaly_chart_svg(obj))  # noqa: S308 — our own SVG, values escaped in charts/
        url = series_url(obj.symbol, obj.timeframe)
        if url is None:
            return svg
        return format_html('{}<p class="series-link"><a href="{}">coverage and recent bars of {} {}</a></p>',
                           svg, url, obj.symbol, obj.timeframe)

    # --- links to what the anomaly is about ---------------------------------------------------------

    @admin.display(description="instrument")
    def instrument(self, obj):
        pk = Instrument.objects.filter(symbol=obj.symbol).values_list("pk", flat=True).first()
        if pk is None:
            return f"{obj.symbol} is not on the watchlist"
        return format_html('<a href="{}">{}</a>', reverse("admin:integrity_instrument_change", args=[pk]), obj.symbol)

    @admin.display(description="series")
    def candles(self, obj):
        """The candle list of the series over the anomaly's period and ``WINDOW_BARS`` bars either side."""
        query = {"q": obj.symbol, "timeframe__exact": obj.timeframe}
        label = f"candles of {obj.symbol} {obj.timeframe}"
        if obj.period_start is not None:
            pad = timeframe_delta(obj.timeframe) * WINDOW_BARS
            end = (obj.period_end or obj.period_start) + pad + timeframe_delta(obj.timeframe)
            query.update(ts__gte=(obj.period_start - pad).isoformat(), ts__lt=end.isoformat())
            label += f" around the anomaly ({WINDOW_BARS} bars either side)"
        url = reverse("admin:integrity_candle_changelist") + "?" + urlencode(query)
        return format_html('<a href="{}">{}</a>', url, label)

    @admin.display(description="backfill executions")
    def executions(self, obj):
        """The execution that found it (a backfill's refused bars) and those that repaired it."""
        rows = []
        if obj.execution_id:
            rows.append((execution_link(obj.execution_id, short=False), "produced it"))
        repairs = (obj.details or {}).get("repairs") if isinstance(obj.details, dict) else None
        for attempt in repairs if isinstance(repairs, list) else []:
            if isinstance(attempt, dict) and attempt.get("execution_id"):
                rows.append((execution_link(attempt["execution_id"], short=False),
                             f"repair at {attempt.get('at', '?')}: {attempt.get('outcome', '?')}"))
        if not rows:
            return "-"
        return format_html_join(mark_safe("<br>"), "{} — {}", rows)

    @admin.display(description="quarantined bars")
    def quarantined_bars(self, obj):
        if obj.anomaly_type != AnomalyType.INVALID_OHLC:
            return "-"
        query = {"q": obj.symbol, "timeframe__exact": obj.timeframe}
        if obj.execution_id:
            query["execution_id"] = str(obj.execution_id)
        url = reverse("admin:integrity_rejectedcandle_changelist") + "?" + urlencode(query)
        return format_html('<a href="{}">bars of {} {} refused{}</a>', url, obj.symbol, obj.timeframe,
                           " by this execution" if obj.execution_id else "")

    def _review(self, request, queryset, target: str, reason: str = ""):
        """The selection moves in one locked transaction ("select all" may be thousands of rows), and
        the one message says what moved and what was refused and why, as split before the move."""
        outcome = review_anomalies(queryset, target, by=request.user.get_username(), reason=reason)
        self.message_user(request, outcome.summary(), messages.WARNING if outcome.refused else messages.SUCCESS)

    @admin.action(description="Acknowledge selected anomalies", permissions=["change"])
    def acknowledge(self, request, queryset):
        self._review(request, queryset, ResolutionStatus.ACKNOWLEDGED)

    @admin.action(description="Resolve selected anomalies as fixed (a recurrence reopens as a regression)",
                  permissions=["change"])
    def resolve(self, request, queryset):
        self._review(request, queryset, ResolutionStatus.RESOLVED, ResolutionReason.FIXED)

    @admin.action(description="Resolve selected anomalies as false positive (never reopened)", permissions=["change"])
    def resolve_false_positive(self, request, queryset):
        self._review(request, queryset, ResolutionStatus.RESOLVED, ResolutionReason.FALSE_POSITIVE)

    @admin.action(description="Resolve selected anomalies as expected, a real event (never reopened)",
                  permissions=["change"])
    def resolve_expected(self, request, queryset):
        self._review(request, queryset, ResolutionStatus.RESOLVED, ResolutionReason.EXPECTED)

    @admin.action(description="Resolve selected anomalies as missing at source (never reopened)",
                  permissions=["change"])
    def resolve_missing_at_source(self, request, queryset):
        self._review(request, queryset, ResolutionStatus.RESOLVED, ResolutionReason.MISSING_AT_SOURCE)

    # --- repair: "Re-fetch this range" ----------------------------------------------------------

    def _request_repair(self, request, anomaly) -> tuple[str | None, str | None]:
        """(the execution id queued, or why not) for one anomaly."""
        try:
            state = request_repair(anomaly, by=f"admin:{request.user.get_username()}")
        except (RepairError, BackfillRefused, BackfillError) as exc:
            return None, f"#{anomaly.pk} {anomaly.symbol} {anomaly.timeframe} not re-fetched: {exc}"
        return str(state.execution_id), None

    @admin.action(description="Re-fetch this range (repair selected anomalies)", permissions=["change"])
    def refetch(self, request, queryset):
        done, refused = [], []
        ordered = queryset.order_by("symbol", "timeframe", "period_start", "id")
        for anomaly in ordered[:REFETCH_LIMIT]:
            queued, why = self._request_repair(request, anomaly)
            if queued:
                done.append(f"#{anomaly.pk} {anomaly.symbol} {anomaly.timeframe} ({queued})")
            else:
                refused.append(why)
        # The rest are named too, so the report adds up to the selection.
        refused += [f"#{pk} not re-fetched: at most {REFETCH_LIMIT} repairs are queued per action"
                    for pk in ordered[REFETCH_LIMIT:].values_list("pk", flat=True)]
        report_action(self, request, done, refused, "repairs queued", queued=True)

    # --- the buttons of an anomaly's page: the same services as the bulk actions ---------------

    def _review_one(self, request, obj, target: str, data, reason: str = "") -> ActionResult:
        outcome = review_anomalies(DataAnomaly.objects.filter(pk=obj.pk), target, by=request.user.get_username(),
                                   reason=reason, note=data.get("note", ""))
        return ActionResult(outcome.summary(), messages.WARNING if outcome.refused else messages.SUCCESS)

    @object_action(label="Acknowledge", url="acknowledge", unavailable=_not_open, form=AcknowledgeForm,
                   explain="Acknowledge this anomaly: someone has it in hand. It stops counting in the health "
                           "status and the open totals, and stays unresolved until it is resolved.")
    def acknowledge_this(self, request, obj, data) -> ActionResult:
        return self._review_one(request, obj, ResolutionStatus.ACKNOWLEDGED, data)

    @object_action(label="Resolve", url="resolve", unavailable=_resolved, form=ResolveForm,
                   explain="Resolve this anomaly with a reason (and a note, if you like).")
    def resolve_this(self, request, obj, data) -> ActionResult:
        return self._review_one(request, obj, ResolutionStatus.RESOLVED, data, reason=data["reason"])

    @object_action(label="Re-fetch this range", url="repair", unavailable=_not_repairable, explain=_explain_repair)
    def repair_this(self, request, obj, data) -> ActionResult:
        """Claim the series and queue the repair (``request_repair``, as the API and the bulk action);
        then to the execution's page, saying what it is now (a synchronous queue has already run it)."""
        queued, why = self._request_repair(request, obj)
        if why:
            return ActionResult(why, messages.WARNING)
        state = BackfillState.objects.get(execution_id=queued)
        next_url = (reverse("admin:integrity_backfillstate_change", args=[str(state.execution_id)])
                    if request.user.has_perm("integrity.view_backfillstate") else None)
        if state.status == BackfillStatus.PENDING:
            note = no_worker_sentence()
            return ActionResult(f"Repair of anomaly #{obj.pk} queued as execution {state.execution_id}."
                                + (f" {note}" if note else ""), messages.WARNING if note else messages.SUCCESS,
                                next_url)
        obj.refresh_from_db()
        return ActionResult(
            f"Repair of anomaly #{obj.pk} ran as execution {state.execution_id}: {state.status}; the anomaly is "
            f"now {obj.resolution_status}" + (f" ({obj.resolution_reason})" if obj.resolution_reason else "") + ".",
            messages.SUCCESS if state.status == BackfillStatus.COMPLETED else messages.WARNING, next_url)

    @object_action(label="Take the reference's bars", url="repair_from_reference", unavailable=_no_reference_repair,
                   form=ReferenceRepairForm, explain=_explain_reference_repair)
    def take_reference_this(self, request, obj, data) -> ActionResult:
        """A source mismatch repaired from the reference (``integrity.reconcile.repair_from_reference``,
        as the API's repair-from-reference): only on a person's word, with a note."""
        try:
            outcome = repair_from_reference(obj, data["note"], by=f"admin:{request.user.get_username()}")
        except ReconcileError as exc:
            return ActionResult(str(exc), messages.WARNING)
        if outcome["resolved"]:
            return ActionResult(f"Reference bars written ({outcome['inserted']} inserted, {outcome['updated']} "
                                f"updated; execution {outcome['execution_id']}): anomaly #{obj.pk} resolved.")
        return ActionResult(f"The reference repair did not complete: {outcome['error'] or outcome['status']}",
                            messages.WARNING)


@admin.register(DuplicateRecordLog)
class DuplicateRecordLogAdmin(ReadOnlyAdmin):
    list_display = ("symbol", "timeframe", "candle_time", "duplicate_count", "kept_id", "kept_by", "deleted",
                    "cleaned_at")
    list_filter = ("timeframe", "kept_by", "cleaned_at")
    search_fields = ("symbol",)
    date_hierarchy = "cleaned_at"
    actions = ["export_csv", "export_xlsx"]
    export_csv = export_csv_action(DUPLICATES, "duplicate-log entries")
    export_xlsx = export_xlsx_action(DUPLICATES, "duplicate-log entries")

    @admin.display(description="deleted ids")
    def deleted(self, obj):
        return ", ".join(str(i) for i in (obj.duplicate_ids or [])[:10])
