"""django-filter sets for the list endpoints.

Strict: a filter value the filter cannot use answers 400 naming the parameter, never the unfiltered
list and never 500. That covers a value of the wrong type (``?active=maybe``, ``?alert_sent=banana``,
``?detected_after=last-tuesday``), a choice that does not exist, and a parameter given without a
value (``?detected_after=``, ``?symbol=``), which django-filter would otherwise ignore.

``?search=`` and ``?ordering=`` (``StrictSearchFilter``, ``StrictOrderingFilter``) are offered on the
lists that name ``search_fields`` / ``ordering_fields``, both listed in the schema; an ordering field
the list does not offer, or either parameter without a value, is a 400 naming what it takes.
"""

from __future__ import annotations

from datetime import UTC

import django_filters as filters
from django import forms
from django.core.exceptions import ValidationError
from django.db import models
from django_filters.fields import IsoDateTimeField
from rest_framework.exceptions import ValidationError as BadParameter
from rest_framework.filters import OrderingFilter, SearchFilter

from ..models import (
    AnomalyType,
    BackfillState,
    BackfillStatus,
    DataAnomaly,
    DuplicateRecordLog,
    Instrument,
    ResolutionStatus,
    SeriesStats,
    Severity,
    SymbolFailureTracking,
    Timeframe,
)


class UTCDateTimeField(IsoDateTimeField):
    """An ISO 8601 instant, converted to UTC: PostgreSQL refuses offsets beyond ±15:59 that Python
    parses (``+20:33``), and an instant outside the representable range is a 400, not a 500."""

    def to_python(self, value):
        value = super().to_python(value)
        if value is None:
            return None
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValidationError("the date is out of the supported range", code="overflow") from None


class UTCDateTimeFilter(filters.IsoDateTimeFilter):
    field_class = UTCDateTimeField


class StrictBooleanField(forms.Field):
    """``true``/``false`` (or ``1``/``0``, any letter case); anything else is an error, not "unknown"."""

    widget = forms.TextInput  # passes the raw text through (the select widget turns "maybe" into None)

    def to_python(self, value):
        if value in (None, ""):
            return None
        text = str(value).strip().lower()
        if text in ("true", "1"):
            return True
        if text in ("false", "0"):
            return False
        raise ValidationError("%(value)r is not a boolean: use true or false", code="invalid",
                              params={"value": str(value)})


class StrictBooleanFilter(filters.BooleanFilter):
    field_class = StrictBooleanField


class StrictFilterForm(forms.Form):
    """A filter parameter given without a value is an error (django-filter would skip the filter)."""

    def clean(self):
        cleaned = super().clean()
        for name in self.fields:
            if name not in self.data:
                continue
            values = self.data.getlist(name) if hasattr(self.data, "getlist") else [self.data.get(name)]
            if any(value is None or not str(value).strip() for value in values):
                self._errors.pop(name, None)  # "not a valid choice: ''" says less than this
                self.add_error(name, ValidationError(
                    "empty value: give a value or leave the parameter out", code="empty"))
        return cleaned


class StrictFilterSet(filters.FilterSet):
    """Base of every list's filters: strict booleans and no empty values (see the module doc)."""

    FILTER_DEFAULTS = {**filters.FilterSet.FILTER_DEFAULTS,
                       models.BooleanField: {"filter_class": StrictBooleanFilter}}

    def get_form_class(self):
        fields = {name: filter_.field for name, filter_ in self.filters.items()}
        return type(f"{self.__class__.__name__}Form", (StrictFilterForm, self._meta.form), fields)


def _given(request, param: str) -> str | None:
    """The parameter's value (None when absent); a parameter without a value is a 400."""
    if param not in request.query_params:
        return None
    value = request.query_params.get(param, "").strip()
    if not value:
        raise BadParameter({param: ["empty value: give a value or leave the parameter out"]})
    return value


class StrictSearchFilter(SearchFilter):
    """``?search=``: case-insensitive containment in any of the view's ``search_fields`` (every word)."""

    def get_search_terms(self, request):
        return super().get_search_terms(request) if _given(request, self.search_param) else []

    def get_schema_operation_parameters(self, view):
        fields = ", ".join(getattr(view, "search_fields", ()))
        return [{"name": self.search_param, "required": False, "in": "query", "schema": {"type": "string"},
                 "description": f"Rows where every word occurs (any letter case) in one of: {fields}."}]


class StrictOrderingFilter(OrderingFilter):
    """``?ordering=``: comma-separated fields of the view's ``ordering_fields``, ``-`` for descending;
    anything else is a 400 naming the allowed fields. The row id breaks ties (stable pages)."""

    def get_ordering(self, request, queryset, view):
        value = _given(request, self.ordering_param)
        if value is None:
            return self.get_default_ordering(view)
        allowed = tuple(view.ordering_fields)
        fields = [term.strip() for term in value.split(",")]
        wrong = [term for term in fields if term.removeprefix("-") not in allowed]
        if wrong:
            raise BadParameter({self.ordering_param: [
                f"cannot order by {', '.join(map(repr, wrong))[:200]}: use {', '.join(allowed)} "
                f"(prefix - for descending, comma-separated)"]})
        if not {"id", "-id"} & set(fields):
            fields.append("-id" if fields[0].startswith("-") else "id")
        return fields

    def get_schema_operation_parameters(self, view):
        allowed = ", ".join(view.ordering_fields)
        default = ",".join(view.ordering)
        return [{"name": self.ordering_param, "required": False, "in": "query", "schema": {"type": "string"},
                 "description": f"Order by {allowed} (comma-separated, prefix - for descending; "
                                f"default {default}). Any other field is a 400."}]


class BackfillFilter(StrictFilterSet):
    symbol = filters.CharFilter()
    timeframe = filters.ChoiceFilter(choices=Timeframe.choices)
    status = filters.MultipleChoiceFilter(choices=BackfillStatus.choices, distinct=False)
    created_after = UTCDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UTCDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = BackfillState
        fields = ["symbol", "timeframe", "status"]


class AnomalyFilter(StrictFilterSet):
    symbol = filters.CharFilter()
    timeframe = filters.ChoiceFilter(choices=Timeframe.choices)
    anomaly_type = filters.MultipleChoiceFilter(choices=AnomalyType.choices, distinct=False)
    severity = filters.MultipleChoiceFilter(choices=Severity.choices, distinct=False)
    resolution_status = filters.MultipleChoiceFilter(choices=ResolutionStatus.choices, distinct=False)
    detected_after = UTCDateTimeFilter(field_name="detected_at", lookup_expr="gte")
    detected_before = UTCDateTimeFilter(field_name="detected_at", lookup_expr="lt")

    class Meta:
        model = DataAnomaly
        fields = ["symbol", "timeframe", "anomaly_type", "severity", "resolution_status"]


class DuplicateLogFilter(StrictFilterSet):
    symbol = filters.CharFilter()
    timeframe = filters.ChoiceFilter(choices=Timeframe.choices)
    cleaned_after = UTCDateTimeFilter(field_name="cleaned_at", lookup_expr="gte")
    cleaned_before = UTCDateTimeFilter(field_name="cleaned_at", lookup_expr="lt")

    class Meta:
        model = DuplicateRecordLog
        fields = ["symbol", "timeframe"]


class FailureFilter(StrictFilterSet):
    min_failures = filters.NumberFilter(field_name="consecutive_failures", lookup_expr="gte")

    class Meta:
        model = SymbolFailureTracking
        fields = ["symbol", "alert_sent"]


class InstrumentFilter(StrictFilterSet):
    class Meta:
        model = Instrument
        fields = ["asset_class", "provider", "active", "calendar"]


class SeriesFilter(StrictFilterSet):
    timeframe = filters.ChoiceFilter(choices=Timeframe.choices)
    max_coverage = filters.NumberFilter(field_name="coverage_pct", lookup_expr="lte")

    class Meta:
        model = SeriesStats
        fields = ["symbol", "timeframe"]
