"""REST API v1. Thin: every action calls the same service functions as the commands and admin."""

from __future__ import annotations

import re
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from ..backfill import BackfillError, BackfillRefused, NotCancellable, cancel_backfill
from ..exports import ANOMALIES, BACKFILLS, DUPLICATES
from ..failures import reset_symbol_failures
from ..health.summaries import open_anomaly_totals
from ..health.workers import worker_status
from ..models import (
    ACTIVE_STATUSES,
    BackfillState,
    DataAnomaly,
    DuplicateRecordLog,
    HealthCheckRun,
    Instrument,
    InvalidTransition,
    ResolutionStatus,
    SeriesStats,
    SymbolFailureTracking,
)
from ..series import active_instruments
from ..tasks import request_backfill
from . import filters
from .export import CSVExportMixin
from .parsers import StorableQueryFilterBackend
from .permissions import InstrumentPermissions, ModelPermissions
from .queued import BackfillQueuedSerializer, CancelSerializer, queued_reply
from .rows import represent_rows, value_columns
from .serializers import (
    BackfillRequestSerializer,
    BackfillStateSerializer,
    DataAnomalyListSerializer,
    DataAnomalySerializer,
    DuplicateRecordLogSerializer,
    HealthCheckRunSerializer,
    InstrumentSerializer,
    ResolveSerializer,
    ReviewSerializer,
    SeriesStatsSerializer,
    SymbolFailureSerializer,
)


class KeysetPagination(CursorPagination):
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000
    INVALID = "invalid cursor: follow the 'next' or 'previous' links of a previous page (same ordering)"

    def decode_cursor(self, request):
        # DRF answers a malformed cursor with 404; it is a bad parameter, so 400 naming it.
        try:
            return super().decode_cursor(request)
        except NotFound:
            raise ValidationError({self.cursor_query_param: [self.INVALID]}) from None

    def paginate_queryset(self, queryset, request, view=None):
        try:
            return super().paginate_queryset(queryset, request, view)
        except (DjangoValidationError, ValueError, TypeError):
            # A cursor of one ?ordering= used with another: its position is not a value of this field.
            if self.cursor_query_param not in request.query_params:
                raise
            raise ValidationError({self.cursor_query_param: [self.INVALID]}) from None


# The backends of a list with ``?search=`` and ``?ordering=`` (``integrity.api.filters``).
SEARCHABLE = [StorableQueryFilterBackend, filters.StrictSearchFilter, filters.StrictOrderingFilter]


def cursor_pagination(field: str):
    """Keyset pagination for the large tables: stable under inserts, cost independent of the page."""
    return type(f"CursorBy{field.strip('-').title()}", (KeysetPagination,), {"ordering": (field, "-id")})


class TableViewSet(viewsets.ReadOnlyModelViewSet):
    """List and detail of one table, behind the model's view permission (actions: its change permission)."""

    permission_classes = [ModelPermissions]


def actor(request) -> str:
    return request.user.get_username() if request.user and request.user.is_authenticated else ""


# The 409 of a request for a series another execution holds (``refusal``).
BUSY_SERIES = inline_serializer("BackfillConflict", {"detail": serializers.CharField(),
                                                     "active_execution_id": serializers.UUIDField()})


def queued_responses(bad_request: str) -> dict:
    """The answers of a request that queues a run: 202 (the pending execution), 400, 409 (busy series)."""
    return {202: BackfillQueuedSerializer, 400: OpenApiResponse(description=bad_request), 409: BUSY_SERIES}


def service_error(exc: Exception) -> Response:
    """A request a service refused (``RepairError``, ``ReconcileError``): 409 when it conflicts with
    the object's state (resolved, busy), else 400; the message names why."""
    code = status.HTTP_409_CONFLICT if getattr(exc, "conflict", False) else status.HTTP_400_BAD_REQUEST
    return Response({"detail": str(exc)}, status=code)


def refusal(exc: BackfillRefused | BackfillError) -> Response:
    """A backfill the service would not queue: 409 naming the execution that holds the series, or 400
    for a request it cannot run."""
    if isinstance(exc, BackfillRefused):
        return Response({"detail": str(exc),
                         "active_execution_id": str(exc.active.execution_id) if exc.active else None},
                        status=status.HTTP_409_CONFLICT)
    return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)


class BackfillViewSet(CSVExportMixin, TableViewSet):
    """Backfill executions. POST requests a backfill: 202 with the execution id (and a ``warning`` when
    no worker is running), or 409 naming the execution that already holds the series. POST
    …/{execution_id}/cancel/ cancels a pending one. ``?format=csv`` exports every row the filters select."""

    queryset = BackfillState.objects.all()
    serializer_class = BackfillStateSerializer
    filterset_class = filters.BackfillFilter
    filter_backends = SEARCHABLE
    search_fields = ("symbol", "requested_by", "error_message")
    ordering_fields = ("created_at", "updated_at", "records_inserted", "invalid_bars")
    ordering = ("-created_at", "-id")
    csv_export = BACKFILLS
    pagination_class = cursor_pagination("-created_at")
    lookup_field = "execution_id"

    @extend_schema(
        request=BackfillRequestSerializer,
        responses=queued_responses("invalid request"),
    )
    def create(self, request):
        payload = BackfillRequestSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        try:
            state = request_backfill(data["symbol"], data["timeframe"], start=data.get("start"),
                                     end=data.get("end"), provider=data.get("provider"),
                                     requested_by=f"api:{actor(request)}")
        except (BackfillRefused, BackfillError) as exc:
            return refusal(exc)
        return Response(queued_reply(state), status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=CancelSerializer, responses={200: BackfillStateSerializer, 409: OpenApiResponse(
        description="not pending: a worker has started it, or it has finished")})
    @action(detail=True, methods=["post"])
    def cancel(self, request, execution_id=None):
        state = self.get_object()
        body = CancelSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            state = cancel_backfill(state.execution_id, by=f"api:{actor(request)}",
                                    reason=body.validated_data.get("reason", ""))
        except NotCancellable as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(BackfillStateSerializer(state).data)


class AnomalyViewSet(CSVExportMixin, TableViewSet):
    """Data anomalies with their review lifecycle: open → acknowledged → resolved. ``?format=csv``
    exports every row the filters select."""

    queryset = DataAnomaly.objects.all()
    serializer_class = DataAnomalySerializer
    filterset_class = filters.AnomalyFilter
    filter_backends = SEARCHABLE
    search_fields = ("symbol", "description")
    ordering_fields = ("detected_at", "last_seen_at", "affected_rows")
    ordering = ("-detected_at", "-id")
    csv_export = ANOMALIES
    pagination_class = cursor_pagination("-detected_at")

    def get_serializer_class(self):
        return DataAnomalyListSerializer if self.action == "list" else DataAnomalySerializer

    def list(self, request, *args, **kwargs):
        if getattr(request.accepted_renderer, "format", None) == "csv":
            return super().list(request, *args, **kwargs)
        # The hot path of on-call review: the compact row's columns (and the ordering's, for the
        # cursor) as plain dicts, represented without a model instance or serializer per row
        # (integrity.api.rows; bench/bench_api_list.py measures it against a bare Django view).
        columns = dict.fromkeys([*value_columns(DataAnomalyListSerializer), *self.ordering_fields, "id"])
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()).values(*columns))
        return self.get_paginated_response(represent_rows(DataAnomalyListSerializer, page))

    def _review(self, request, method: str, serializer=ReviewSerializer):
        anomaly = self.get_object()
        body = serializer(data=request.data)
        body.is_valid(raise_exception=True)
        extra = {"reason": body.validated_data["reason"]} if "reason" in body.validated_data else {}
        try:
            getattr(anomaly, method)(by=actor(request), note=body.validated_data.get("note", ""), **extra)
        except InvalidTransition as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        anomaly.refresh_from_db()
        return Response(DataAnomalySerializer(anomaly).data)

    @extend_schema(request=ReviewSerializer, responses={200: DataAnomalySerializer, 409: OpenApiResponse()})
    @action(detail=True, methods=["post"])
    def acknowledge(self, request, pk=None):
        return self._review(request, "acknowledge")

    @extend_schema(request=ResolveSerializer, responses={200: DataAnomalySerializer, 400: OpenApiResponse(),
                                                         409: OpenApiResponse()})
    @action(detail=True, methods=["post"])
    def resolve(self, request, pk=None):
        return self._review(request, "resolve", ResolveSerializer)


class DuplicateLogViewSet(CSVExportMixin, TableViewSet):
    """The audit log of duplicate cleanup (read-only). ``?format=csv`` exports every row the filters select."""

    queryset = DuplicateRecordLog.objects.all()
    serializer_class = DuplicateRecordLogSerializer
    filterset_class = filters.DuplicateLogFilter
    filter_backends = SEARCHABLE
    search_fields = ("symbol",)
    ordering_fields = ("cleaned_at", "candle_time", "duplicate_count")
    ordering = ("-cleaned_at", "-id")
    csv_export = DUPLICATES
    pagination_class = cursor_pagination("-cleaned_at")


class SymbolFailureViewSet(TableViewSet):
    """Consecutive failures per symbol; POST …/reset/ zeroes the count and re-arms the alert."""

    queryset = SymbolFailureTracking.objects.all().order_by("-consecutive_failures", "symbol")
    serializer_class = SymbolFailureSerializer
    filterset_class = filters.FailureFilter
    lookup_field = "symbol"
    lookup_value_regex = "[^/]+"

    @extend_schema(request=None, responses={200: SymbolFailureSerializer})
    @action(detail=True, methods=["post"])
    def reset(self, request, symbol=None):
        tracking = self.get_object()
        reset_symbol_failures(tracking.symbol)
        tracking.refresh_from_db()
        return Response(SymbolFailureSerializer(tracking).data)


class InstrumentViewSet(viewsets.ModelViewSet):
    """The watchlist."""

    queryset = Instrument.objects.all().order_by("symbol")
    serializer_class = InstrumentSerializer
    permission_classes = [InstrumentPermissions]
    filterset_class = filters.InstrumentFilter
    lookup_field = "symbol"
    lookup_value_regex = "[^/]+"


class SeriesViewSet(TableViewSet):
    """Per-series coverage and statistics (from enrichment)."""

    queryset = SeriesStats.objects.all().order_by("symbol", "timeframe")
    serializer_class = SeriesStatsSerializer
    filterset_class = filters.SeriesFilter


# An absolute file-system path (POSIX or Windows), not the path part of a URL ("https://h/a/b").
_FILE_PATH = re.compile(r"""(?<![\w:/.~-])(?:/[^\s'"/:,;()<>]+){2,}/?|\b[A-Za-z]:\\[^\s'"]+""")


def one_line_error(error: Any) -> str:
    """A failed check's error as API users see it: its first line (the exception's summary), without
    file paths. The traceback and the full message stay in the log and in the stored run (admin)."""
    lines = str(error or "").strip().splitlines()
    line = _FILE_PATH.sub("<path>", lines[0] if lines else "").strip()
    return line[:300] or "failed (see the server log)"


def public_health_errors(errors: Any) -> list[dict[str, str]]:
    return [{"check": str(item.get("check", "")), "error": one_line_error(item.get("error"))}
            for item in (errors if isinstance(errors, list) else []) if isinstance(item, dict)]


class PublicHealthCheckRunSerializer(HealthCheckRunSerializer):
    """A health run without internals: each failed check as ``{check, error}`` with a one-line error
    (the run stores the traceback too, for the log and the admin)."""

    def to_representation(self, instance):
        data = super().to_representation(instance)
        data["errors"] = public_health_errors(data.get("errors"))
        if isinstance(data.get("results"), dict) and "errors" in data["results"]:
            data["results"] = {**data["results"], "errors": public_health_errors(data["results"]["errors"])}
        return data


def live_workers() -> dict:
    """Whether a django-q2 cluster is alive and what waits for one (no host names, no error text)."""
    status = worker_status()
    return {"alive": status.alive, "clusters": len(status.clusters), "queued": status.queued,
            "oldest_queued_seconds": status.oldest_queued_seconds, "pending_backfills": status.pending_backfills,
            "problem": status.problem if status.alive is not None else "cannot tell whether a worker is running"}


class HealthView(APIView):
    """The latest health run and a live summary."""

    permission_classes = [ModelPermissions]
    queryset = HealthCheckRun.objects.all()  # for the permission check

    @extend_schema(responses=inline_serializer("HealthSummary", {
        "latest_run": PublicHealthCheckRunSerializer(allow_null=True),
        "live": serializers.DictField(),
    }))
    def get(self, request):
        latest = HealthCheckRun.objects.order_by("-started_at").first()
        totals = open_anomaly_totals()  # counted as the health job counts them (status open)
        live = {
            "open_anomalies": totals.open,
            "open_anomalies_by_severity": totals.by_severity,
            "open_anomalies_by_type": totals.by_type,
            "acknowledged_anomalies": DataAnomaly.objects.filter(
                resolution_status=ResolutionStatus.ACKNOWLEDGED).count(),
            "active_backfills": BackfillState.objects.filter(status__in=ACTIVE_STATUSES).count(),
            "failing_symbols": SymbolFailureTracking.objects.filter(consecutive_failures__gt=0).count(),
            "instruments": active_instruments().count(),
            "workers": live_workers(),
        }
        return Response({"latest_run": PublicHealthCheckRunSerializer(latest).data if latest else None,
                         "live": live})
