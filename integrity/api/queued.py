"""The API's replies about queued work: a requested backfill says whether a worker is alive to run
it (``integrity.health.workers``), and a pending one can be cancelled (``integrity.backfill.cancel``)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from ..health.workers import no_worker_note
from ..models import BackfillState
from .serializers import BackfillStateSerializer


class BackfillQueuedSerializer(BackfillStateSerializer):
    """A requested (queued) execution, with ``warning`` when no django-q2 cluster is alive to run it."""

    warning = serializers.CharField(required=False, help_text="present when no worker is running")

    class Meta(BackfillStateSerializer.Meta):
        fields = [*BackfillStateSerializer.Meta.fields, "warning"]
        read_only_fields = fields


def queued_reply(state: BackfillState) -> dict[str, Any]:
    data = dict(BackfillStateSerializer(state).data)
    note = no_worker_note()
    if note:
        data["warning"] = f"{note}: the backfill is queued and waits until a worker runs it"
    return data


class CancelSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, max_length=500,
                                   help_text='recorded in the error message: "cancelled: <reason> (by <user>)"')
