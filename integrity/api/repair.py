"""The anomaly endpoints with repair: ``POST /api/v1/anomalies/{id}/repair/`` claims the anomaly's series
for a re-fetch of its range and queues the run (``integrity.tasks.request_repair``), as
``POST /api/v1/backfills/`` does: 202 with the (pending) execution, 409 when the series is busy or the
anomaly is resolved, 400 when no re-fetch can repair it."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.response import Response

from ..backfill import BackfillError, BackfillRefused
from ..repair import RepairError
from ..tasks import request_repair
from .queued import queued_reply
from .views import AnomalyViewSet, actor, queued_responses, refusal, service_error


class RepairableAnomalyViewSet(AnomalyViewSet):
    """Data anomalies with their review lifecycle (open → acknowledged → resolved, with a reason) and
    their repair (a re-fetch of the anomaly's range, then a re-check)."""

    @extend_schema(
        request=None,
        responses=queued_responses("no re-fetch can repair this anomaly"),
    )
    @action(detail=True, methods=["post"])
    def repair(self, request, pk=None):
        anomaly = self.get_object()
        try:
            state = request_repair(anomaly, by=f"api:{actor(request)}")
        except RepairError as exc:
            return service_error(exc)
        except (BackfillRefused, BackfillError) as exc:
            return refusal(exc)
        return Response(queued_reply(state), status=status.HTTP_202_ACCEPTED)
