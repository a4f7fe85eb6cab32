"""Reviewing a selection of anomalies (``integrity.quality.review``): what it reports is what it did.

The admin's bulk actions call this service; the split into "moved" and "refused" is made before the
UPDATE, on locked rows, so neither a filtered selection nor a concurrent reviewer can make the report
disagree with the table (issue 10, point 16).
"""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from integrity.models import DataAnomaly
from integrity.quality import review
from integrity.quality.review import ReviewOutcome, review_anomalies
from tests.helpers import make_anomaly


@pytest.mark.django_db
class TestReviewAnomalies:
    def test_a_selection_filtered_by_status_reports_the_rows_it_moved_and_refuses_none(self):
        a, b = make_anomaly(), make_anomaly()
        outcome = review_anomalies(DataAnomaly.objects.filter(resolution_status="open"), "resolved", by="ann")
        assert (outcome.moved, outcome.refused) == ([a.pk, b.pk], [])
        assert set(DataAnomaly.objects.values_list("resolution_status", "resolved_by")) == {("resolved", "ann")}

    def test_refused_rows_keep_their_status_and_their_reviewer(self):
        done = make_anomaly(resolution_status="resolved", resolved_by="bob")
        seen = make_anomaly(resolution_status="acknowledged", acknowledged_by="bob")
        outcome = review_anomalies(DataAnomaly.objects.all(), "acknowledged", by="ann")
        assert outcome.moved == [] and outcome.refused == [(done.pk, "resolved"), (seen.pk, "acknowledged")]
        assert set(DataAnomaly.objects.values_list("acknowledged_by", "resolved_by")) == {("", "bob"), ("bob", "")}

    def test_the_move_records_who_when_and_the_status_in_one_timestamp(self):
        anomaly = make_anomaly()
        outcome = review_anomalies(DataAnomaly.objects.all(), "acknowledged", by="ann")
        anomaly.refresh_from_db()
        assert (anomaly.resolution_status, anomaly.acknowledged_by) == ("acknowledged", "ann")
        assert anomaly.acknowledged_at == anomaly.updated_at == outcome.at

    def test_a_selection_larger_than_one_update_batch_moves_whole(self, monkeypatch):
        monkeypatch.setattr(review, "UPDATE_BATCH", 2)
        ids = [make_anomaly().pk for _ in range(5)]
        assert review_anomalies(DataAnomaly.objects.all(), "resolved", by="ann").moved == ids
        assert DataAnomaly.objects.filter(resolution_status="resolved").count() == 5

    def test_a_move_the_lifecycle_does_not_have_is_refused(self):
        make_anomaly(resolution_status="resolved")
        with pytest.raises(ValueError, match="no review move to 'open'; the moves are to acknowledged, resolved"):
            review_anomalies(DataAnomaly.objects.all(), "open", by="ann")
        assert DataAnomaly.objects.get().resolution_status == "resolved"


class TestSummary:
    def outcome(self, target="resolved", moved=(), refused=()):
        from datetime import UTC, datetime

        return ReviewOutcome(target=target, by="ann", at=datetime(2024, 5, 1, 12, tzinfo=UTC), moved=list(moved),
                             refused=list(refused))

    def test_moved_only(self):
        assert self.outcome(moved=[4, 5]).summary() == "Resolved 2 (#4, #5, by ann at 2024-05-01 12:00:00 UTC)."

    def test_moved_and_refused_in_one_sentence(self):
        assert self.outcome(moved=[4], refused=[(20, "resolved")]).summary() == (
            "Resolved 1 (#4, by ann at 2024-05-01 12:00:00 UTC); refused 1: #20 is already resolved.")

    def test_refused_only_names_the_rule(self):
        assert self.outcome("acknowledged", refused=[(7, "resolved"), (8, "resolved")]).summary() == (
            "Acknowledged none; refused 2: #7, #8 are resolved, and only open anomalies can be acknowledged.")

    def test_long_lists_are_sampled_and_counted(self):
        summary = self.outcome(moved=range(1, 26)).summary()
        assert summary.startswith("Resolved 25 (#1, #2,") and "#20 and 5 more, by ann" in summary

    def test_an_empty_selection_says_so(self):
        assert self.outcome().summary() == "Resolved none: no anomaly was selected."


@pytest.mark.django_db(transaction=True)
def test_two_reviewers_resolving_the_same_selection_at_once_each_report_what_they_did():
    ids = [make_anomaly().pk for _ in range(30)]
    start = threading.Barrier(2)
    outcomes: dict[str, ReviewOutcome] = {}
    errors: list[BaseException] = []

    def reviewer(name: str) -> None:
        try:
            start.wait()
            outcomes[name] = review_anomalies(DataAnomaly.objects.filter(pk__in=ids), "resolved", by=name)
        except BaseException as exc:  # noqa: BLE001 — reported by the main thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=reviewer, args=(name,)) for name in ("ann", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    ann, bob = outcomes["ann"], outcomes["bob"]
    assert sorted(ann.moved + bob.moved) == ids  # every anomaly moved once, by one of them
    assert sorted(pk for pk, _ in ann.refused) == bob.moved and sorted(pk for pk, _ in bob.refused) == ann.moved
    assert {status for _, status in ann.refused + bob.refused} <= {"resolved"}
    stored = dict(DataAnomaly.objects.values_list("pk", "resolved_by"))
    assert all(stored[pk] == "ann" for pk in ann.moved) and all(stored[pk] == "bob" for pk in bob.moved)
