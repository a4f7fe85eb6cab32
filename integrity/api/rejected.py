"""``/api/v1/rejected-candles/``: the quarantine of bars refused at ingest (``rejected_candles``),
read-only, with strict filters (``integrity.api.filters``) and a CSV export: ``?format=csv`` streams
every row the filters select (not a page), in ``integrity.rejected``'s CSV layout."""

from __future__ import annotations

import json

import django_filters as django_filters
from django.http import StreamingHttpResponse
from django.utils import timezone
from rest_framework import renderers, serializers, viewsets
from rest_framework.settings import api_settings

from ..models import RejectedCandle, Timeframe
from ..rejected import VALUE_COLUMNS, csv_lines
from ..validation import REASON_CODES
from .filters import StrictFilterSet, UTCDateTimeFilter
from .permissions import ModelPermissions
from .views import cursor_pagination


class CSVRenderer(renderers.BaseRenderer):
    """Names the ``csv`` format; the rows themselves are streamed by the view. Anything else rendered
    with it (an error) is written as JSON."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        if renderer_context and renderer_context.get("response") is not None:
            renderer_context["response"]["Content-Type"] = "application/json"
        return json.dumps(data).encode()


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


class RejectedCandleViewSet(viewsets.ReadOnlyModelViewSet):
    """Bars refused at ingest. ``?format=csv`` exports every row the filters select."""

    queryset = RejectedCandle.objects.all()
    serializer_class = RejectedCandleSerializer
    permission_classes = [ModelPermissions]
    filterset_class = RejectedCandleFilter
    pagination_class = cursor_pagination("-ts")
    renderer_classes = [*api_settings.DEFAULT_RENDERER_CLASSES, CSVRenderer]

    def list(self, request, *args, **kwargs):
        if getattr(request.accepted_renderer, "format", None) != "csv":
            return super().list(request, *args, **kwargs)
        queryset = self.filter_queryset(self.get_queryset()).order_by("symbol", "timeframe", "ts")
        response = StreamingHttpResponse(csv_lines(queryset), content_type="text/csv; charset=utf-8")
        stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
        response["Content-Disposition"] = f'attachment; filename="rejected-candles-{stamp}.csv"'
        return response
