"""Admin screens: review lists, actions that call the service layer, anomaly charts (the site and its
dashboard: ``integrity.admin_site``).

Audit tables (duplicate log, health runs, backfill executions) are read-only. No model has foreign
keys, so there is nothing for ``list_select_related`` to join: every list is the page query plus the
paginator's count and the filters' choices, whatever the number of rows (tests/test_admin.py).

Every screen derives from ``IntegrityModelAdmin``: a list accepts only the query string its own links
make, and a form only values the database can store, so a hand-made URL or value is a 400 page or a
field error that says what was wrong, never a 500 (tests/test_admin_hardening.py).
"""

from __future__ import annotations

import json
from datetime import MAXYEAR, date

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.exceptions import DisallowedModelAdminLookup
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import BadRequest, ValidationError
from django.core.paginator import Paginator
from django.db import connection, models
from django.db.models import Q
from django.forms.fields import InvalidJSONInput
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.safestring import mark_safe
from rest_framework.exceptions import ParseError

from .admin_queue import cancel_selected_pending, note_no_worker
from .api.parsers import MAX_JSON_DEPTH, check_storable, unstorable_reason
from .api.validators import validate_provider_options
from .backfill import BackfillError, BackfillRefused, reap_dead_backfills
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
    ResolutionStatus,
    SeriesStats,
    SymbolFailureTracking,
)
from .providers import PROVIDER_NAMES, check_bar_alignment
from .quality.review import review_anomalies
from .quality.thresholds import validate_thresholds
from .series import series_of
from .tasks import request_backfill
from .timeframes import BarAlignment

# --- every screen: a bad URL or value is a 400 page or a field error, never a 500 ---------------


class BadListQuery(BadRequest):
    """A list URL that no link of the list makes: answered with a 400 page naming what was wrong."""


def _shown(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _refuse_unstorable_query(request) -> None:
    """No database can store or compare a NUL (PostgreSQL refuses it: a 500 there, and only there)."""
    for name, values in request.GET.lists():
        for text in (name, *values):
            reason = unstorable_reason(text)
            if reason:
                raise BadListQuery(f"query parameter {json.dumps(name)[:60]}: {reason}")


def _date_hierarchy_problem(field: str, params: dict[str, list[str]]) -> str | None:
    """Why the date hierarchy's ``year``/``month``/``day`` name no period (None when they name one).

    Django turns them into ``[start, end)`` with ``datetime``: a year past C's int range is an
    ``OverflowError`` (a 500), year 9999 has no end. Month and day without a year are not the
    hierarchy's: nothing consumes them, so they are refused as lookups the list does not offer.
    """
    if f"{field}__year" not in params:
        return None
    given = {part: params[f"{field}__{part}"][-1] for part in ("year", "month", "day") if f"{field}__{part}" in params}
    got = ", ".join(f"{field}__{part}={_shown(value)}" for part, value in given.items())
    rule = f"the date hierarchy's {field}__year, __month and __day must name a date in the years 1 to {MAXYEAR - 1}"
    if not all(value.isascii() and value.isdigit() and len(value) <= 4 for value in given.values()):
        return f"{rule} (whole numbers); got {got}"
    try:
        start = date(int(given["year"]), int(given.get("month", 1)), int(given.get("day", 1)))
    except ValueError as exc:
        return f"{rule}; got {got}: {exc}"
    if start.year >= MAXYEAR:
        return f"{rule}; got {got}"
    return None


class StrictChangeList(ChangeList):
    """A list that accepts only the query string its own links make.

    Django applies any query parameter that names a field as a lookup, whatever the list offers
    (``?symbol__regex=(`` is an invalid regular expression on the database: a 500). Here a parameter
    must be one that a list filter or the date hierarchy consumes; anything left over is refused
    (``DisallowedModelAdminLookup``, a 400). ``ModelAdmin.lookup_allowed`` cannot draw that line: it
    is asked before the filters run, so it cannot know which parameters they take.
    """

    def get_filters(self, request):
        given = self.get_filters_params()
        hierarchy = set()
        if self.date_hierarchy:
            problem = _date_hierarchy_problem(self.date_hierarchy, given)
            if problem:
                raise BadListQuery(problem)
            if f"{self.date_hierarchy}__year" in given:  # the hierarchy sets its own __gte/__lt bounds
                hierarchy = {f"{self.date_hierarchy}__gte", f"{self.date_hierarchy}__lt"}
        filter_specs, has_filters, remaining, may_have_duplicates, has_active_filters = super().get_filters(request)
        unexpected = sorted(key for key in remaining if key in given and key not in hierarchy)
        if unexpected:
            offered = sorted({name for spec in filter_specs for name in spec.expected_parameters()})
            if self.date_hierarchy:
                offered += [f"{self.date_hierarchy}__{part}" for part in ("year", "month", "day")]
            raise DisallowedModelAdminLookup(
                f"this list cannot be filtered by {', '.join(unexpected)}: its filters take "
                f"{', '.join(offered) or 'no parameters'}"
                + (", and q (search)" if self.search_fields else "")
            )
        return filter_specs, has_filters, remaining, may_have_duplicates, has_active_filters


def _incorrect_lookup_reason(request, exc: IncorrectLookupParameters) -> str:
    cause = exc.args[0] if exc.args else exc.__cause__
    if cause is None and "p" in request.GET:  # the paginator's InvalidPage carries no message
        return f"page {_shown(request.GET['p'])} of this list does not exist"
    if isinstance(cause, ValidationError):
        return "a filter value is not valid: " + " ".join(cause.messages)
    return f"a filter value is not valid: {cause}" if cause else "a filter value is not valid"


def _json_problem(value) -> str | None:
    try:
        check_storable(value, what="JSON")  # the API's check: one rule for API and admin
    except ParseError as exc:
        return str(exc.detail)
    return None


class StorableJSONField(forms.JSONField):
    """JSON the database can store, or a field error: text with a NUL or a lone surrogate anywhere
    (PostgreSQL refuses both: a 500, on PostgreSQL only) and nesting deeper than ``MAX_JSON_DEPTH``
    (Python's parser hits the recursion limit near 1,000 levels: a 500 on both)."""

    def to_python(self, value):
        try:
            converted = super().to_python(value)
        except RecursionError:
            raise ValidationError(f"JSON nests deeper than {MAX_JSON_DEPTH} levels", code="invalid") from None
        problem = _json_problem(converted)
        if problem:
            raise ValidationError(problem, code="invalid")
        return converted

    def bound_data(self, data, initial):
        # A refused value is shown again as typed: re-encoding a lone surrogate would break the page.
        try:
            value = super().bound_data(data, initial)
        except RecursionError:
            return InvalidJSONInput(data)
        if isinstance(value, InvalidJSONInput) or _json_problem(value) is None:
            return value
        return InvalidJSONInput(data)


class IntegrityModelAdmin(admin.ModelAdmin):
    """The base of every integrity screen (see the module docstring)."""

    formfield_overrides = {models.JSONField: {"form_class": StorableJSONField}}

    def get_changelist(self, request, **kwargs):
        return StrictChangeList

    def get_changelist_instance(self, request):
        try:
            return super().get_changelist_instance(request)
        except IncorrectLookupParameters as exc:  # Django would redirect to a "database error" page
            raise BadListQuery(_incorrect_lookup_reason(request, exc)) from exc

    def changelist_view(self, request, extra_context=None):
        try:
            _refuse_unstorable_query(request)
            return super().changelist_view(request, extra_context)
        except (BadListQuery, DisallowedModelAdminLookup) as exc:
            return self.bad_list_query(request, str(exc))

    def response_action(self, request, queryset):
        pk = self.opts.pk
        for value in request.POST.getlist(ACTION_CHECKBOX_NAME):
            try:
                pk.run_validators(pk.to_python(value))
            except ValidationError as exc:
                raise BadListQuery(f"selected row id {_shown(value)} is not an id: {' '.join(exc.messages)}") from None
        return super().response_action(request, queryset)

    def bad_list_query(self, request, reason: str) -> TemplateResponse:
        context = {**self.admin_site.each_context(request), "title": "Bad request", "opts": self.opts,
                   "reason": reason.rstrip("."), "list_url": reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist")}
        return TemplateResponse(request, "admin/integrity/bad_list_query.html", context, status=400)


class ReadOnlyAdmin(IntegrityModelAdmin):
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
    if done:
        note_no_worker(modeladmin, request)


class InstrumentForm(forms.ModelForm):
    """The model's clean() checks calendar, symbol and timeframes (``integrity.series``' instrument
    rules); the form adds provider and thresholds."""

    provider = forms.ChoiceField(choices=[(name, name) for name in PROVIDER_NAMES], initial="synthetic")
    bar_alignment = forms.ChoiceField(choices=BarAlignment.choices, initial=BarAlignment.CLOCK, required=False,
                                      help_text=Instrument._meta.get_field("bar_alignment").help_text)

    class Meta:
        model = Instrument
        fields = ["symbol", "asset_class", "calendar", "timeframes", "bar_alignment", "provider",
                  "provider_options", "quality_thresholds", "active"]

    def clean(self):
        cleaned = super().clean()
        if "provider" in cleaned and "provider_options" in cleaned:
            try:
                validate_provider_options(cleaned["provider"], cleaned["provider_options"], cleaned.get("symbol", ""))
            except ValueError as exc:
                self.add_error("provider_options", str(exc))
        if "provider" in cleaned and "bar_alignment" in cleaned:
            try:
                check_bar_alignment(cleaned["provider"], cleaned["bar_alignment"])
            except ValueError as exc:
                self.add_error("bar_alignment", str(exc))
        return cleaned

    def clean_bar_alignment(self):
        return self.cleaned_data.get("bar_alignment") or BarAlignment.CLOCK

    def clean_quality_thresholds(self):
        value = self.cleaned_data.get("quality_thresholds") or {}
        try:
            validate_thresholds(value)
        except (TypeError, ValueError) as exc:
            raise forms.ValidationError(str(exc)) from None
        return value


@admin.register(Instrument)
class InstrumentAdmin(IntegrityModelAdmin):
    form = InstrumentForm
    list_display = ("symbol", "asset_class", "calendar", "timeframes", "bar_alignment", "provider", "active",
                    "updated_at")
    list_filter = ("asset_class", "provider", "bar_alignment", "active", "calendar", "created_at")
    search_fields = ("symbol",)
    date_hierarchy = "created_at"
    actions = ["backfill_now"]

    @admin.action(description="Backfill selected instruments now (every timeframe)", permissions=["change"])
    def backfill_now(self, request, queryset):
        series, refused = [], []
        for instrument in queryset.order_by("symbol"):
            if not instrument.timeframes:
                refused.append(f"{instrument.symbol} refused: it has no timeframes to backfill")
            series.extend((s.symbol, s.timeframe, None, None) for s in series_of(instrument))
        for reason in refused:
            self.message_user(request, reason, messages.WARNING)
        if series or not refused:
            _request_backfills(self, request, series)


class EstimatedCountPaginator(Paginator):
    """The unfiltered candle list counts from PostgreSQL's statistics (``pg_class.reltuples``)
    instead of a COUNT(*) over a table of hundreds of millions of rows; filtered lists and small
    tables count exactly."""

    estimate_from = 1_000_000

    @cached_property
    def count(self):
        queryset = self.object_list
        if connection.vendor == "postgresql" and not queryset.query.where:
            with connection.cursor() as cursor:
                cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                               [queryset.model._meta.db_table])
                row = cursor.fetchone()
            if row and row[0] >= self.estimate_from:
                return row[0]
        return super().count


class CandleSourceFilter(admin.SimpleListFilter):
    """The providers as choices: a DISTINCT over the candle table would scan all of it."""

    title = "source"
    parameter_name = "source"

    def lookups(self, request, model_admin):
        return [(name, name) for name in PROVIDER_NAMES]

    def queryset(self, request, queryset):
        return queryset.filter(source=self.value()) if self.value() else queryset


@admin.register(Candle)
class CandleAdmin(IntegrityModelAdmin):
    """Built for a very large table: every query on this list can be answered from an index.

    No date hierarchy (its min/max and DISTINCT years scan the whole table); the ``ts`` filter
    offers fixed ranges instead. Search is by exact symbol (served by the (symbol, timeframe, ts)
    index; a substring search would scan).
    """

    list_display = ("symbol", "timeframe", "ts", "open", "high", "low", "close", "volume", "source", "ingested_at")
    list_filter = ("timeframe", CandleSourceFilter, "ts")
    search_fields = ("symbol",)
    search_help_text = "exact symbol, e.g. BTC-USD"
    show_full_result_count = False  # no second COUNT(*) of the whole table on a filtered page
    show_facets = admin.ShowFacets.NEVER  # facet counts (?_facets) would count the whole table per choice
    paginator = EstimatedCountPaginator

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(symbol__in={term, term.upper()}), False


@admin.register(BackfillState)
class BackfillStateAdmin(IntegrityModelAdmin):
    list_display = (
        "execution_id", "symbol", "timeframe", "status", "records_inserted", "records_updated",
        "invalid_bars", "retry_count", "started_at", "completed_at", "heartbeat_at", "short_error",
    )
    list_filter = ("status", "timeframe", "asset_class", "provider", "created_at")
    search_fields = ("symbol", "execution_id", "error_message")
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in BackfillState._meta.fields]
    actions = ["retry_failed", "reap_dead", "cancel_pending"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # executions change only through the service (terminal states are final)

    def has_delete_permission(self, request, obj=None):
        return False  # the execution history is the audit trail of what ran, when, and why it failed

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
        _report(self, request, done, refused, "reaped")

    @admin.action(description="Cancel selected pending backfills (not yet started by a worker)",
                  permissions=["retry"])
    def cancel_pending(self, request, queryset):
        cancel_selected_pending(self, request, queryset)

    def has_retry_permission(self, request):
        return request.user.has_perm("integrity.change_backfillstate")


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
        _report(self, request, done, refused, "reset")


@admin.register(HealthCheckRun)
class HealthCheckRunAdmin(ReadOnlyAdmin):
    list_display = ("started_at", "status", "duration_ms", "alerts_sent", "finished_at")
    list_filter = ("status", "started_at")
    date_hierarchy = "started_at"


@admin.register(SeriesStats)
class SeriesStatsAdmin(ReadOnlyAdmin):
    list_display = ("symbol", "timeframe", "first_ts", "last_ts", "bar_count", "expected_bars", "coverage_pct",
                    "robust_volatility", "last_scan_at")
    list_filter = ("timeframe", "last_scan_at")
    search_fields = ("symbol",)
    date_hierarchy = "last_scan_at"
