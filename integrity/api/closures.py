"""``/api/v1/closures/``: an instrument's closures (extra closed time), list/create/edit/delete.

Every write goes through ``integrity.closures`` (the rules, and the re-scan of the series whose
expected bars it changes), as the admin and ``manage.py closures`` do. Filters: ``symbol``,
``start_after`` / ``end_before`` (ISO instants).
"""

from __future__ import annotations

import django_filters as filters
from django.db import IntegrityError
from rest_framework import serializers, status, viewsets
from rest_framework.response import Response

from ..closures import ClosureError, add_closure, change_closure, closure_errors, remove_closure
from ..models import InstrumentClosure
from .filters import StrictFilterSet, UTCDateTimeFilter
from .permissions import ModelPermissions


class ClosurePermissions(ModelPermissions):
    """Recording a closure needs the add permission; editing the change one; removing the delete one."""

    perms_map = {**ModelPermissions.perms_map, "POST": ["%(app_label)s.add_%(model_name)s"]}


class ClosureSerializer(serializers.ModelSerializer):
    class Meta:
        model = InstrumentClosure
        fields = ["id", "symbol", "start", "end", "reason", "created_by", "created_at"]
        read_only_fields = ["id", "created_by", "created_at"]
        validators = []  # the unique (symbol, start, end) is answered by the service: same closure, 200

    def validate(self, attrs):
        instance = self.instance
        symbol = attrs.get("symbol", getattr(instance, "symbol", None))
        start = attrs.get("start", getattr(instance, "start", None))
        end = attrs.get("end", getattr(instance, "end", None))
        errors = closure_errors(symbol, start, end)
        if errors:
            raise serializers.ValidationError(errors)
        return attrs


class ClosureFilter(StrictFilterSet):
    symbol = filters.CharFilter()
    start_after = UTCDateTimeFilter(field_name="start", lookup_expr="gte")
    end_before = UTCDateTimeFilter(field_name="end", lookup_expr="lte")

    class Meta:
        model = InstrumentClosure
        fields = ["symbol"]


class ClosureViewSet(viewsets.ModelViewSet):
    """Closures: POST records one (201; the same symbol, start and end again: 200 with the existing one)."""

    queryset = InstrumentClosure.objects.all().order_by("symbol", "start", "id")
    serializer_class = ClosureSerializer
    permission_classes = [ClosurePermissions]
    filterset_class = ClosureFilter

    def create(self, request, *args, **kwargs):
        body = self.get_serializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        user = request.user.get_username() if request.user.is_authenticated else ""
        try:
            closure, created = add_closure(data["symbol"], data["start"], data["end"], data.get("reason", ""),
                                           by=f"api:{user}")
        except ClosureError as exc:
            return Response(exc.errors, status=status.HTTP_400_BAD_REQUEST)
        return Response(self.get_serializer(closure).data,
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    def perform_update(self, serializer):
        closure, data = serializer.instance, serializer.validated_data
        try:
            change_closure(closure, data.get("symbol", closure.symbol), data.get("start", closure.start),
                           data.get("end", closure.end), data.get("reason", closure.reason))
        except IntegrityError:
            raise serializers.ValidationError(
                {"non_field_errors": ["this closure (symbol, start, end) is already recorded"]}) from None
        except ClosureError as exc:
            raise serializers.ValidationError(exc.errors) from None

    def perform_destroy(self, instance):
        remove_closure(instance)
