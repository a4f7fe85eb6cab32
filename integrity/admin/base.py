"""What every integrity admin screen shares: a bad URL or value is a 400 page or a field error, never a 500.

Every screen derives from ``IntegrityModelAdmin``: a list accepts only the query string its own links
make (``StrictChangeList``), and a form only values the database can store (``StorableJSONField``), so a
hand-made URL or value is a 400 page or a field error that says what was wrong, never a 500
(tests/test_admin_hardening.py). Also the actions' shared reporting, backfill requests and CSV export,
the one way an execution id is shown: a link to that execution (``execution_link``), and the one
way a list is filtered by execution (``ExecutionFilter``).

How values read: instants in UTC and labelled so (``timeframes.utc_text``; Django's own rendering follows the
same ``DATETIME_FORMAT``, marketdata_site/formats), JSON pretty-printed (``pretty_json``), long text
cut with the whole on hover (``shortened``), severities
as coloured badges (``severity_badge``, styles in static/integrity/admin.css), date ranges filtered by
``UTCDateRangeFilter``.
"""

from __future__ import annotations

import json
import uuid
from datetime import MAXYEAR, date

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.exceptions import DisallowedModelAdminLookup
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import BadRequest, ValidationError
from django.db import models
from django.forms.fields import InvalidJSONInput
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from rangefilter.filters import DateRangeFilter
from rest_framework.exceptions import ParseError

from ..api.parsers import MAX_JSON_DEPTH, check_storable, unstorable_reason
from ..backfill import BackfillError, BackfillRefused
from ..exports import Export
from ..models import BackfillState
from ..tasks import request_backfill
from .queue import no_worker_sentence


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

    def prepare_value(self, value):
        """Shown indented, one key a line, as typed when it was refused."""
        if isinstance(value, InvalidJSONInput):
            return value
        return json.dumps(value, indent=2, ensure_ascii=False, cls=self.encoder)

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
    """The base of every integrity screen (see ``integrity.admin.base``)."""

    formfield_overrides = {models.JSONField: {"form_class": StorableJSONField}}

    class Media:
        css = {"all": ["integrity/admin.css"]}

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

    def get_actions(self, request):
        """The reviewer's actions first: "Delete selected" (where deleting is allowed at all) comes
        last, and is not offered alone (a row is then deleted from its own page, confirmed there)."""
        actions = super().get_actions(request)
        delete = actions.pop("delete_selected", None)
        if delete is not None and actions:
            actions["delete_selected"] = delete
        return actions

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


# Items named in an action's message; the rest are counted.
LISTED = 20


def _listed(items: list[str], total: int | None = None) -> str:
    total = len(items) if total is None else total
    shown = "; ".join(items[:LISTED])
    return f"{shown}; and {total - min(len(items), LISTED)} more" if total > min(len(items), LISTED) else shown


def action_report(done: list[str], refused: list[str], verb: str, *, queued: bool = False,
                  refused_total: int | None = None) -> tuple[str, int]:
    """The one message of a bulk action, and its level: what was done (counted, the first ``LISTED``
    named), what was not and why (``refused_total``: the count when ``refused`` is a sample), and —
    after queuing work — that no worker would run it. Never "done: n" beside "nothing to do": the
    counts add up to the selection."""
    parts = [f"{verb.capitalize()}: {len(done)} — {_listed(done)}" if done else f"{verb.capitalize()}: none"]
    if refused:
        total = len(refused) if refused_total is None else refused_total
        parts.append(f"Not done: {total} — {_listed(refused, total)}")
    note = no_worker_sentence() if queued and done else ""
    if note:
        parts.append(note)
    message = ". ".join(part.rstrip(".") for part in parts) + "."
    level = messages.WARNING if refused or note else messages.SUCCESS if done else messages.INFO
    return message, level


def report_action(modeladmin, request, done: list[str], refused: list[str], verb: str, *,
                  queued: bool = False, refused_total: int | None = None) -> None:
    modeladmin.message_user(request, *action_report(done, refused, verb, queued=queued, refused_total=refused_total))


def queue_backfills(request, series: list[tuple[str, str, object, object]]) -> tuple[list[str], list[str]]:
    """Queue a backfill of each series (``request_backfill``, as the API does): (queued, refused)."""
    done, refused = [], []
    for symbol, timeframe, start, end in series:
        try:
            state = request_backfill(symbol, timeframe, start=start, end=end,
                                     requested_by=f"admin:{request.user.get_username()}")
            done.append(f"{symbol} {timeframe} ({state.execution_id})")
        except (BackfillRefused, BackfillError) as exc:
            refused.append(f"{symbol} {timeframe} refused: {exc}")
    return done, refused


def choice_filter(title: str, parameter: str, choices, lookup: str) -> type[admin.SimpleListFilter]:
    """A list filter offering a fixed list of ``choices`` (no DISTINCT over a big table to find them),
    keeping the rows where ``lookup`` matches the chosen value."""

    class ChoiceFilter(admin.SimpleListFilter):
        def lookups(self, request, model_admin):
            return [(choice, choice) for choice in choices]

        def queryset(self, request, queryset):
            return queryset.filter(**{lookup: self.value()}) if self.value() else queryset

    ChoiceFilter.title, ChoiceFilter.parameter_name = title, parameter
    ChoiceFilter.__name__ = ChoiceFilter.__qualname__ = f"{parameter.capitalize()}ChoiceFilter"
    return ChoiceFilter


def execution_link(execution_id, *, short: bool = True) -> str:
    """An execution id as a link to that execution's page (its first 8 characters when ``short``,
    the whole id on hover); ``-`` when there is none.

    The backfill admin finds an execution by its id in the URL (``BackfillStateAdmin.get_object``), so
    no query is needed here: a list column costs nothing per row.
    """
    if not execution_id:
        return "-"
    text = str(execution_id)
    url = reverse("admin:integrity_backfillstate_change", args=[text])
    return format_html('<a class="execution-link" href="{}" title="{}">{}</a>', url, text,
                       f"{text[:8]}…" if short else text)


def backfill_by_execution_id(object_id) -> BackfillState | None:
    """The execution named by ``object_id`` when it is an execution id (a UUID), else None."""
    try:
        execution_id = uuid.UUID(str(object_id))
    except ValueError:
        return None
    return BackfillState.objects.filter(execution_id=execution_id).first()


class ExecutionFilter(admin.SimpleListFilter):
    """Rows of one execution (``?execution_id=<uuid>``, as ``execution_link``s' pages link them).

    Offers no choices unless a subclass names some (``recent_executions``); one given by URL shows
    as chosen. A value that is not a UUID is a 400.
    """

    title = "execution"
    parameter_name = "execution_id"

    def recent_executions(self, request) -> list[str]:
        return []

    def lookups(self, request, model_admin):
        seen = self.recent_executions(request)
        value = self.value()
        if value and value not in seen:
            seen.insert(0, value)  # a link from elsewhere (an execution's page) shows as chosen
        return [(e, e) for e in seen]

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        try:
            execution_id = uuid.UUID(self.value())
        except ValueError:
            raise IncorrectLookupParameters(f"execution_id {self.value()[:40]!r} is not an execution id (a UUID)") from None
        return queryset.filter(execution_id=execution_id)


def export_xlsx_action(export: Export, what: str):
    """The admin action "Export selected {what} as XLSX": the CSV export's columns and rows as a
    spreadsheet (``integrity.exports.xlsx_response``)."""

    @admin.action(description=f"Export selected {what} as XLSX", permissions=["view"])
    def export_xlsx(modeladmin, request, queryset):
        return export.xlsx_response(queryset)

    return export_xlsx


def export_csv_action(export: Export, what: str):
    """The admin action "Export selected {what} as CSV": the rows in ``export``'s layout, the same
    file as the API's ``?format=csv`` (``integrity.exports``)."""

    @admin.action(description=f"Export selected {what} as CSV", permissions=["view"])
    def export_csv(modeladmin, request, queryset):
        return export.response(queryset)

    return export_csv


# --- how values read ----------------------------------------------------------------------------


def shortened(text: str | None, limit: int) -> str:
    """Long text (a description, an error) cut to ``limit`` characters for a list, whole on hover."""
    text = text or ""
    if len(text) <= limit:
        return text
    return format_html('<span title="{}">{}…</span>', text, text[:limit].rstrip())


def pretty_json(value) -> str:
    """A JSON value as an indented block with sorted keys (escaped), not one long line."""
    if value in (None, {}, []):
        return "-"
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return format_html('<pre class="pretty-json">{}</pre>', text)


def severity_badge(severity: str, label: str = "") -> str:
    """A severity (low, medium, high, critical) as a coloured badge."""
    return format_html('<span class="badge severity-{}">{}</span>', severity, label or severity)


class UTCDateRangeFilter(DateRangeFilter):
    """From and to dates (UTC days, both included) of a date-time column, as django-admin-rangefilter
    draws them; a date that does not parse is a 400 naming it, not a filter silently dropped."""

    def __init__(self, field, request, params, model, model_admin, field_path):
        super().__init__(field, request, params, model, model_admin, field_path)
        self.title = f"{self.title} (UTC dates)"

    def queryset(self, request, queryset):
        if self.form.is_bound and not self.form.is_valid():
            problems = "; ".join(f"{name}={_shown(str(self.form.data.get(name, '')))}: {' '.join(errors)}"
                                 for name, errors in self.form.errors.items())
            raise IncorrectLookupParameters(ValidationError(problems))
        return super().queryset(request, queryset)
