"""django-filter sets for the list endpoints (invalid filter values answer 400, never 500)."""

from __future__ import annotations

from datetime import UTC

import django_filters as filters
from django.core.exceptions import ValidationError
from django_filters.fields import IsoDateTimeField

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


class BackfillFilter(filters.FilterSet):
    symbol = filters.CharFilter()
    timeframe = filters.ChoiceFilter(choices=Timeframe.choices)
    status = filters.MultipleChoiceFilter(choices=BackfillStatus.choices, distinct=False)
    created_after = UTCDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UTCDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = BackfillState
        fields = ["symbol", "timeframe", "status"]


class AnomalyFilter(filters.FilterSet):
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


class DuplicateLogFilter(filters.FilterSet):
    symbol = filters.CharFilter()
    timeframe = filters.ChoiceFilter(choices=Timeframe.choices)
    cleaned_after = UTCDateTimeFilter(field_name="cleaned_at", lookup_expr="gte")
    cleaned_before = UTCDateTimeFilter(field_name="cleaned_at", lookup_expr="lt")

    class Meta:
        model = DuplicateRecordLog
        fields = ["symbol", "timeframe"]


class FailureFilter(filters.FilterSet):
    min_failures = filters.NumberFilter(field_name="consecutive_failures", lookup_expr="gte")

    class Meta:
        model = SymbolFailureTracking
        fields = ["symbol", "alert_sent"]


class InstrumentFilter(filters.FilterSet):
    class Meta:
        model = Instrument
        fields = ["asset_class", "provider", "active", "calendar"]


class SeriesFilter(filters.FilterSet):
    timeframe = filters.ChoiceFilter(choices=Timeframe.choices)
    max_coverage = filters.NumberFilter(field_name="coverage_pct", lookup_expr="lte")

    class Meta:
        model = SeriesStats
        fields = ["symbol", "timeframe"]
