"""The anomaly list's fast path (integrity.api.rows): rows from ``.values()`` are represented exactly as the
serializer represents model instances, in every time zone, for every kind of field."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from integrity import models
from integrity.api.rows import represent_rows, value_columns
from integrity.api.serializers import BackfillStateSerializer, DataAnomalyListSerializer
from integrity.backfill import create_backfill_state
from tests.helpers import client_for, make_anomaly, user_with, utc

pytestmark = pytest.mark.django_db


def as_json(data):
    return json.loads(json.dumps(data))


@pytest.fixture
def anomalies():
    make_anomaly()  # no period, open
    make_anomaly(period_start=utc(2024, 3, 1, 12, 30, 15, 250), period_end=utc(2024, 3, 1, 14),
                 resolution_status="resolved", resolution_reason="fixed", regressions=2, description="naïve ✓")
    make_anomaly(anomaly_type="outlier", severity="critical", affected_rows=0, description="")
    return list(models.DataAnomaly.objects.order_by("-detected_at", "-id"))


@pytest.fixture
def viewer():
    return client_for(user_with("view_dataanomaly"), token=True)


class TestRepresentRows:
    def test_rows_read_from_values_equal_the_serializers_output(self, anomalies):
        rows = models.DataAnomaly.objects.order_by("-detected_at", "-id").values(
            *value_columns(DataAnomalyListSerializer))
        assert represent_rows(DataAnomalyListSerializer, rows) == DataAnomalyListSerializer(anomalies, many=True).data

    def test_date_times_follow_the_current_time_zone_as_the_serializer_does(self, anomalies):
        with timezone.override("America/New_York"):
            rows = models.DataAnomaly.objects.order_by("-detected_at", "-id").values(
                *value_columns(DataAnomalyListSerializer))
            fast = represent_rows(DataAnomalyListSerializer, rows)
            assert fast == DataAnomalyListSerializer(anomalies, many=True).data
        assert fast[1]["period_start"].endswith("-05:00")

    def test_other_field_kinds_go_through_their_own_representation(self):
        state = create_backfill_state("BTC-USD", "1h", "crypto")
        state.details = {"note": [1, 2]}
        state.save()
        rows = models.BackfillState.objects.filter(pk=state.pk).values(*value_columns(BackfillStateSerializer))
        represented = represent_rows(BackfillStateSerializer, rows)
        assert represented == [BackfillStateSerializer(state).data]
        assert uuid.UUID(represented[0]["execution_id"]) == state.execution_id


class TestAnomalyList:
    def test_the_page_is_the_serializers_output_of_the_same_rows(self, anomalies, viewer):
        response = viewer.get("/api/v1/anomalies/")
        assert response.status_code == 200
        assert response.json()["results"] == as_json(DataAnomalyListSerializer(anomalies, many=True).data)

    def test_a_cursor_over_a_column_the_row_does_not_show_pages_through_every_row(self, viewer):
        base = utc(2024, 1, 1)
        for i in range(5):
            make_anomaly(last_seen_at=base + timedelta(hours=i))
        first = viewer.get("/api/v1/anomalies/?ordering=last_seen_at&page_size=2").json()
        assert "last_seen_at" not in first["results"][0]
        seen = [row["id"] for row in first["results"]]
        page = first
        while page["next"]:
            page = viewer.get(page["next"]).json()
            seen += [row["id"] for row in page["results"]]
        by_last_seen = list(models.DataAnomaly.objects.order_by("last_seen_at", "id").values_list("id", flat=True))
        assert seen == by_last_seen

    def test_filters_still_apply_and_refuse_bad_values(self, anomalies, viewer):
        critical = viewer.get("/api/v1/anomalies/?severity=critical").json()["results"]
        assert [row["anomaly_type"] for row in critical] == ["outlier"]
        assert viewer.get("/api/v1/anomalies/?severity=").status_code == 400
        assert viewer.get("/api/v1/anomalies/?severity=huge").status_code == 400

    def test_a_parameter_no_filter_knows_leaves_the_list_whole(self, anomalies, viewer):
        assert len(viewer.get("/api/v1/anomalies/?unrelated=1").json()["results"]) == 3
