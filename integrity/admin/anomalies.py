"""Anomaly review (acknowledge, resolve with a reason, the chart around an anomaly, "Re-fetch this
range", links to what the anomaly is about) and the duplicate-cleanup log; both export as CSV."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import mark_safe

from ..backfill import BackfillError, BackfillRefused
from ..charts import anomaly_chart_svg
from ..exports import ANOMALIES, DUPLICATES
from ..models import (
    AnomalyType,
    DataAnomaly,
    DuplicateRecordLog,
    Instrument,
    InvalidTransition,
    ResolutionReason,
    ResolutionStatus,
)
from ..prices import prices_shown
from ..quality.review import review_anomalies
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
from .queue import note_no_worker

# The candles linked from an anomaly: its period and this many bars either side.
WINDOW_BARS = 10
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


class DataAnomalyForm(forms.ModelForm):
    """The note, and "resolve as": a reason resolves the anomaly when the form is saved."""

    resolve_as = forms.ChoiceField(
        required=False, choices=[("", "— leave as it is —"), *ResolutionReason.choices],
        help_text="Resolve with this reason on save. Any reason but \"fixed\" is final: no scan reopens the "
                  "problem; a fixed problem that comes back reopens as a regression.")

    class Meta:
        model = DataAnomaly
        fields = ["resolution_note"]


@admin.register(DataAnomaly)
class DataAnomalyAdmin(IntegrityModelAdmin):
    form = DataAnomalyForm
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
        "resolved_by", "resolved_at", "chart",
    ]
    fields = ["chart", *readonly_fields[:-1], "resolution_note", "resolve_as"]

    export_csv = export_csv_action(ANOMALIES, "anomalies")
    export_xlsx = export_xlsx_action(ANOMALIES, "anomalies")

    def has_add_permission(self, request):
        return False

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
        return mark_safe(anomaly_chart_svg(obj))  # noqa: S308 — our own SVG, values escaped in charts.py

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

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        reason = form.cleaned_data.get("resolve_as")
        if not reason:
            return
        try:
            obj.resolve(by=request.user.get_username(), reason=reason)
        except InvalidTransition as exc:
            self.message_user(request, f"not resolved: {exc}", messages.WARNING)

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
        """(what was queued, or why not) for one anomaly."""
        try:
            state = request_repair(anomaly, by=f"admin:{request.user.get_username()}")
        except (RepairError, BackfillRefused, BackfillError) as exc:
            return None, f"#{anomaly.pk} {anomaly.symbol} {anomaly.timeframe} not re-fetched: {exc}"
        return f"#{anomaly.pk} {anomaly.symbol} {anomaly.timeframe} ({state.execution_id})", None

    @admin.action(description="Re-fetch this range (repair selected anomalies)", permissions=["change"])
    def refetch(self, request, queryset):
        done, refused = [], []
        for anomaly in queryset.order_by("symbol", "timeframe", "period_start", "id")[:1000]:
            queued, why = self._request_repair(request, anomaly)
            (done if queued else refused).append(queued or why)
        report_action(self, request, done, refused, "repairs queued")
        if done:
            note_no_worker(self, request)

    def get_urls(self):
        return [path("<path:object_id>/repair/", self.admin_site.admin_view(self.repair_view),
                     name="integrity_dataanomaly_repair"), *super().get_urls()]

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        context["repairable"] = obj is not None and self._repairable(obj)
        return super().render_change_form(request, context, add, change, form_url, obj)

    @staticmethod
    def _repairable(obj) -> bool:
        try:
            repair_range(obj)
        except RepairError:
            return False
        return True

    def repair_view(self, request, object_id):
        """GET: confirm; POST: claim the series and queue the repair, then back to the anomaly."""
        anomaly = get_object_or_404(DataAnomaly, pk=object_id) if str(object_id).isdigit() else None
        if anomaly is None:
            return redirect(reverse("admin:integrity_dataanomaly_changelist"))
        if not self.has_change_permission(request, anomaly):
            return redirect(reverse("admin:integrity_dataanomaly_change", args=[anomaly.pk]))
        change_url = reverse("admin:integrity_dataanomaly_change", args=[anomaly.pk])
        if request.method == "POST":
            queued, why = self._request_repair(request, anomaly)
            self.message_user(request, f"repair queued: {queued}" if queued else why,
                              messages.SUCCESS if queued else messages.WARNING)
            if queued:
                note_no_worker(self, request)
            return redirect(change_url)
        try:
            start, end = repair_range(anomaly)
        except RepairError as exc:
            self.message_user(request, f"#{anomaly.pk} cannot be re-fetched: {exc}", messages.WARNING)
            return redirect(change_url)
        context = {**self.admin_site.each_context(request), "title": "Re-fetch this range", "opts": self.opts,
                   "anomaly": anomaly, "start": start, "end": end}
        return TemplateResponse(request, "admin/integrity/repair_confirm.html", context)


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
