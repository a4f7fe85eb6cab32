"""``/api/v1/rejected-candles/``: the quarantine of bars refused at ingest (``rejected_candles``),
read-only, with strict filters (``integrity.api.filters``) and a CSV export: ``?format=csv`` streams
every row the filters select (not a page), in ``integrity.rejected``'s CSV layout."""

from __future__ import annotations

import django_filters as django_filters
from rest_framework import serializers, viewsets

from ..models import RejectedCandle, Timeframe
from ..rejected import REJECTED_EXPORT, VALUE_COLUMNS
from ..validation import REASON_CODES
from .export import CSVExportMixin
from .filters import StrictFilterSet, UTCDateTimeFilter
from .permissions import ModelPermissions
from .views import cursor_pagination


class RejectedCandleSerializer(serializers.ModelSerializer):
    """Values as they came: numbers, or "nan" / "inf" / "-inf" where they were not finite."""

    rules = serializers.SerializerMethodField()

    class Meta:
        model = RejectedCandle
        fields = ["id", "symbol", "timeframe", "ts", *VALUE_COLUMNS, "rules", "copies", "execution_id",
                  "provider", "rejected_at"]
        read_only_fields = fields

    def get_rules(self, obj) -> list[str]:
        return obj.rule_list

    def to_representation(self, instance):
        data = super().to_representation(instance)
        raw = instance.raw_values or {}
        for column in VALUE_COLUMNS:
            if column in raw:
                data[column] = raw[column]
        return data


class RejectedCandleFilter(StrictFilterSet):
    symbol = django_filters.CharFilter()
    timeframe = django_filters.ChoiceFilter(choices=Timeframe.choices)
    rule = django_filters.ChoiceFilter(choices=[(code, code) for code in REASON_CODES], method="filter_rule")
    execution_id = django_filters.UUIDFilter()
    provider = django_filters.CharFilter()
    ts_after = UTCDateTimeFilter(field_name="ts", lookup_expr="gte")
    ts_before = UTCDateTimeFilter(field_name="ts", lookup_expr="lt")
    rejected_after = UTCDateTimeFilter(field_name="rejected_at", lookup_expr="gte")
    rejected_before = UTCDateTimeFilter(field_name="rejected_at", lookup_expr="lt")

    class Meta:
        model = RejectedCandle
        fields = ["symbol", "timeframe", "execution_id", "provider"]

    def filter_rule(self, queryset, name, value):
        # Codes are never substrings of one another: containment names exactly one rule.
        return queryset.filter(rules__contains=value)


class RejectedCandleViewSet(CSVExportMixin, viewsets.ReadOnlyModelViewSet):
    """Bars refused at ingest. ``?format=csv`` exports every row the filters select."""

    queryset = RejectedCandle.objects.all()
    serializer_class = RejectedCandleSerializer
    permission_classes = [ModelPermissions]
    filterset_class = RejectedCandleFilter
    pagination_class = cursor_pagination("-ts")
    csv_export = REJECTED_EXPORT

