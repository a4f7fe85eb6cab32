"""The doors of reconciliation besides the command: the API actions (reconcile an instrument, take the
reference's bars for an anomaly), the instrument form's reference fields, the admin actions, and the
scheduled task. One behaviour per test."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django_q.models import OrmQ

from integrity.models import AnomalyType, BackfillState, DataAnomaly, Instrument
from integrity.tasks import reconcile_task
from tests.helpers import act, client_for, messages_of, user_with
from tests.reconcile.pair import END, START, Plant, btc_with_reference, stored_pair

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("local_binance", "local_coinbase")]

RECONCILE = "/api/v1/instruments/BTC-USD/reconcile/"


@pytest.fixture
def editor():
    return client_for(user_with("view_instrument", "change_instrument", "view_dataanomaly", "change_dataanomaly",
                                "add_instrument", name="editor"))


def a_mismatch(httpserver) -> DataAnomaly:
    stored_pair(httpserver, Plant(ratio=(range(30, 36), 2.0)))
    reconcile_task("BTC-USD", "1h", START.isoformat(), END.isoformat())
    return DataAnomaly.objects.get(anomaly_type=AnomalyType.SOURCE_MISMATCH)


class TestApi:
    def test_reconcile_queues_the_run_and_says_the_window(self, editor):
        btc_with_reference()
        response = editor.post(RECONCILE, {"timeframe": "1h", "since": "2d"}, format="json")
        assert response.status_code == 202
        body = response.json()
        assert body["task_id"] and [s["reference_provider"] for s in body["series"]] == ["ccxt"]
        assert OrmQ.objects.count() == 1

    @pytest.mark.parametrize(("body", "message"), [
        ({"since": "soon"}, "not a duration"),
        ({"timeframe": "1d"}, "has no 1d series"),
        ({"start": "2024-01-05T00:00:00Z", "end": "2024-01-01T00:00:00Z"}, "empty range"),
    ])
    def test_a_bad_request_is_400_and_queues_nothing(self, editor, body, message):
        btc_with_reference()
        response = editor.post(RECONCILE, body, format="json")
        assert response.status_code == 400 and message in response.json()["detail"]
        assert not OrmQ.objects.exists()

    def test_an_instrument_without_a_reference_is_400(self, editor):
        Instrument.objects.create(symbol="BTC-USD", asset_class="crypto", calendar="24/7", timeframes=["1h"])
        response = editor.post(RECONCILE, {}, format="json")
        assert response.status_code == 400 and "no reference source" in response.json()["detail"]

    def test_reconcile_needs_the_change_permission(self):
        btc_with_reference()
        viewer = client_for(user_with("view_instrument", name="viewer"))
        assert viewer.post(RECONCILE, {}, format="json").status_code == 403

    def test_repair_from_reference_needs_a_note(self, editor, httpserver):
        anomaly = a_mismatch(httpserver)
        response = editor.post(f"/api/v1/anomalies/{anomaly.pk}/repair-from-reference/", {}, format="json")
        assert response.status_code == 400 and "note" in response.json()
        assert BackfillState.objects.count() == 1

    def test_repair_from_reference_writes_the_bars_and_resolves(self, editor, httpserver):
        anomaly = a_mismatch(httpserver)
        response = editor.post(f"/api/v1/anomalies/{anomaly.pk}/repair-from-reference/",
                               {"note": "vendor confirmed the split was not applied"}, format="json")
        assert response.status_code == 200 and response.json()["resolved"] is True
        anomaly.refresh_from_db()
        assert (anomaly.resolution_status, anomaly.resolved_by) == ("resolved", "api:editor")

    def test_repair_from_reference_of_a_resolved_anomaly_is_409(self, editor, httpserver):
        anomaly = a_mismatch(httpserver)
        anomaly.resolve(reason="expected")
        response = editor.post(f"/api/v1/anomalies/{anomaly.pk}/repair-from-reference/", {"note": "x"},
                               format="json")
        assert response.status_code == 409


def post_instrument(client, **fields):
    body = {"symbol": "ETH-USD", "asset_class": "crypto", "calendar": "24/7", "timeframes": ["1h"], **fields}
    return client.post("/api/v1/instruments/", body, format="json")


class TestInstrumentFields:
    def test_reference_options_are_checked_by_the_reference_providers_rules(self, editor):
        response = post_instrument(editor, reference_provider="ccxt", reference_options={"colour": "red"})
        assert response.status_code == 400 and "unknown option(s) colour" in str(response.json()["reference_options"])

    def test_reference_options_without_a_provider_are_refused(self, editor):
        response = post_instrument(editor, reference_options={"exchange": "kraken"})
        assert response.status_code == 400 and "need a reference_provider" in str(response.json())

    def test_a_tolerance_out_of_range_is_refused(self, editor):
        response = post_instrument(editor, reference_provider="ccxt", reconcile_tolerance=-1)
        assert response.status_code == 400 and "reconcile_tolerance" in response.json()

    def test_a_reference_is_stored(self, editor):
        response = post_instrument(editor, reference_provider="ccxt",
                                   reference_options={"exchange": "coinbaseexchange"}, reconcile_tolerance=0.2)
        assert response.status_code == 201, response.json()
        instrument = Instrument.objects.get()
        assert (instrument.reference_provider, instrument.reconcile_tolerance) == ("ccxt", 0.2)


class TestAdmin:
    def test_the_instrument_action_queues_a_reconciliation_and_names_those_without_a_reference(self, admin_client):
        btc = btc_with_reference()
        eth = Instrument.objects.create(symbol="ETH-USD", asset_class="crypto", calendar="24/7", timeframes=["1h"])
        messages = messages_of(act(admin_client, "instrument", "reconcile_now", [btc.pk, eth.pk]))
        assert any("Reconciliations queued: 1" in m for m in messages)
        assert any("ETH-USD not reconciled" in m and "no reference source" in m for m in messages)
        assert OrmQ.objects.count() == 1

    def test_the_anomaly_page_takes_the_reference_bars_only_with_a_note(self, admin_client, httpserver):
        anomaly = a_mismatch(httpserver)
        url = reverse("admin:integrity_dataanomaly_repair_from_reference", args=[anomaly.pk])
        assert "Take the reference" in admin_client.get(
            reverse("admin:integrity_dataanomaly_change", args=[anomaly.pk])).content.decode()
        page = admin_client.post(url, {"note": ""})
        assert page.status_code == 200 and "This field is required" in page.content.decode()
        assert BackfillState.objects.count() == 1
        admin_client.post(url, {"note": "Coinbase is right here"})
        anomaly.refresh_from_db()
        assert anomaly.resolution_status == "resolved"
        assert "Coinbase is right here" in anomaly.resolution_note


class TestScheduledTask:
    def test_it_reconciles_every_instrument_with_a_reference_and_skips_the_rest(self, httpserver, settings):
        stored_pair(httpserver, Plant(price={7: 1.01}))
        Instrument.objects.create(symbol="ETH-USD", asset_class="crypto", calendar="24/7", timeframes=["1h"])
        summary = reconcile_task(start=START.isoformat(), end=END.isoformat())
        assert (summary["series_reconciled"], summary["found"], summary["skipped"]) == (1, 1, ["ETH-USD"])
        assert "findings" not in summary["series"][0]
