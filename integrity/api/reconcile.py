"""Reconciliation in the API (``integrity.reconcile``):

- ``POST /api/v1/instruments/{symbol}/reconcile/`` ``{timeframe?, start?, end?, since?, dry_run?}``
  checks the request and queues the comparison with the instrument's reference source
  (``integrity.tasks.request_reconcile``): 202 with the task id and each series' window; 400 for an
  instrument without a reference, an unknown timeframe or a bad window. Findings arrive as
  ``source_mismatch`` anomalies.
- ``POST /api/v1/anomalies/{id}/repair-from-reference/`` ``{note}`` takes the reference's bars for a
  ``source_mismatch`` anomaly's range, now (a tracked backfill): 200 with the outcome; 400 without a
  note or for another type; 409 when the anomaly is resolved or the series is busy.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.response import Response

from ..models import Timeframe
from ..reconcile import ReconcileError, repair_from_reference
from ..tasks import request_reconcile
from .permissions import ModelPermissions
from .repair import RepairableAnomalyViewSet
from .views import InstrumentViewSet, actor, service_error


class ReconcileRequestSerializer(serializers.Serializer):
    timeframe = serializers.ChoiceField(choices=Timeframe.choices, required=False,
                                        help_text="one timeframe (default: each of the instrument's)")
    start = serializers.DateTimeField(required=False, help_text="window start (inclusive)")
    end = serializers.DateTimeField(required=False, help_text="window end (exclusive)")
    since = serializers.CharField(required=False, max_length=16,
                                  help_text="instead of start: the last 90m, 48h, 7d, 2w before the end")
    dry_run = serializers.BooleanField(required=False, default=False)


class NoteSerializer(serializers.Serializer):
    note = serializers.CharField(max_length=2000, help_text="why the reference's bars are the right ones")


class ReconcilingInstrumentViewSet(InstrumentViewSet):
    """The watchlist, with reconciliation against each instrument's reference source."""

    @extend_schema(request=ReconcileRequestSerializer, responses={
        202: inline_serializer("ReconcileQueued", {"task_id": serializers.CharField(),
                                                   "symbol": serializers.CharField(),
                                                   "dry_run": serializers.BooleanField(),
                                                   "series": serializers.ListField(child=serializers.DictField())}),
        400: OpenApiResponse(description="no reference source, an unknown timeframe or a bad window")})
    @action(detail=True, methods=["post"], permission_classes=[ModelPermissions])
    def reconcile(self, request, symbol=None):
        instrument = self.get_object()
        body = ReconcileRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        args = body.validated_data
        try:
            queued = request_reconcile(instrument.symbol, args.get("timeframe"), start=args.get("start"),
                                       end=args.get("end"), since=args.get("since"), dry_run=args["dry_run"],
                                       by=f"api:{actor(request)}")
        except ReconcileError as exc:
            return service_error(exc)
        return Response(queued, status=status.HTTP_202_ACCEPTED)


class ReconcilingAnomalyViewSet(RepairableAnomalyViewSet):
    """Data anomalies with their review lifecycle, their repair, and — for a source mismatch — taking
    the reference's bars for the range."""

    @extend_schema(request=NoteSerializer, responses={
        200: inline_serializer("ReferenceRepair", {
            "anomaly_id": serializers.IntegerField(), "symbol": serializers.CharField(),
            "timeframe": serializers.CharField(), "range_start": serializers.DateTimeField(),
            "range_end": serializers.DateTimeField(), "execution_id": serializers.UUIDField(allow_null=True),
            "status": serializers.CharField(), "inserted": serializers.IntegerField(),
            "updated": serializers.IntegerField(), "error": serializers.CharField(),
            "note": serializers.CharField(), "by": serializers.CharField(), "resolved": serializers.BooleanField()}),
        400: OpenApiResponse(description="no note, or not a source_mismatch anomaly with a period"),
        409: OpenApiResponse(description="the anomaly is resolved, or its series is busy")})
    @action(detail=True, methods=["post"], url_path="repair-from-reference")
    def repair_from_reference(self, request, pk=None):
        anomaly = self.get_object()
        body = NoteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            outcome = repair_from_reference(anomaly, body.validated_data["note"], by=f"api:{actor(request)}")
        except ReconcileError as exc:
            return service_error(exc)
        if outcome["status"] == "refused":
            return Response({"detail": outcome["error"]}, status=status.HTTP_409_CONFLICT)
        return Response(outcome, status=status.HTTP_200_OK)
