"""Review of a selection of anomalies at once (the admin's bulk actions).

One anomaly moves through ``DataAnomaly.acknowledge`` / ``resolve`` (the API); a selection moves here,
by the same table of moves (``DataAnomaly.REVIEW_MOVES``). What the reviewer is told must be what
happened, so the selection is read and split into "moves" and "refused, and why" *before* anything
is written, with its rows locked until the move commits: no concurrent review can slip between the
split and the UPDATE, and a filtered list (``?resolution_status__exact=open``), whose rows leave the
filter as they move, cannot make the report look at the wrong rows afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from ..models import DataAnomaly, ResolutionReason, ResolutionStatus

# Rows per UPDATE: well under SQLite's limit on bound parameters (32766).
UPDATE_BATCH = 5_000
# Ids named per group in a summary; the rest are counted.
SAMPLE = 20


@dataclass
class ReviewOutcome:
    target: str  # the ResolutionStatus the selection was asked to move to
    by: str
    at: datetime
    reason: str = ""  # a resolution's ResolutionReason
    moved: list[int] = field(default_factory=list)  # ids, ascending
    refused: list[tuple[int, str]] = field(default_factory=list)  # (id, the status it may not leave for target)

    def summary(self) -> str:
        """One sentence that says everything, e.g. ``Resolved 1 (#4, by root at … UTC); refused 1:
        #20 is already resolved.``"""
        verb = self.target.capitalize()
        if not self.moved and not self.refused:
            return f"{verb} none: no anomaly was selected."
        if self.moved:
            why = f", as {self.reason}" if self.reason and self.reason != ResolutionReason.FIXED else ""
            done = (f"{verb} {len(self.moved)} ({_ids(self.moved)}, by {self.by or 'unknown'} at "
                    f"{self.at:%Y-%m-%d %H:%M:%S} UTC{why})")
        else:
            done = f"{verb} none"
        if not self.refused:
            return f"{done}."
        allowed = " or ".join(DataAnomaly.REVIEW_MOVES[self.target][0])
        by_status: dict[str, list[int]] = {}
        for pk, status in self.refused:
            by_status.setdefault(status, []).append(pk)
        reasons = []
        for status, pks in by_status.items():
            be = "is" if len(pks) == 1 else "are"
            if status == self.target:
                reasons.append(f"{_ids(pks)} {be} already {status}")
            else:
                reasons.append(f"{_ids(pks)} {be} {status}, and only {allowed} anomalies can be {self.target}")
        return f"{done}; refused {len(self.refused)}: {'; '.join(reasons)}."


def _ids(pks: list[int]) -> str:
    shown = ", ".join(f"#{pk}" for pk in pks[:SAMPLE])
    return f"{shown} and {len(pks) - SAMPLE} more" if len(pks) > SAMPLE else shown


def review_anomalies(selection: QuerySet, target: str, by: str, reason: str = "", note: str = "") -> ReviewOutcome:
    """Move every anomaly of ``selection`` that may move to ``target``; report the rest with their status.

    ``reason``: a resolution's ``ResolutionReason`` (default ``fixed``); ``note``: kept on every
    anomaly moved (an anomaly page's Acknowledge and Resolve buttons take one).

    One transaction: the selection's rows are locked (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite
    runs ``IMMEDIATE`` transactions, which hold the write lock from the start), split by status, and
    the movable ones updated in batches, the compare-and-set on status kept as a second guard.
    """
    if target not in DataAnomaly.REVIEW_MOVES:
        raise ValueError(f"no review move to {target!r}; the moves are to {', '.join(DataAnomaly.REVIEW_MOVES)}")
    if target == ResolutionStatus.RESOLVED:
        reason = reason or ResolutionReason.FIXED
        if reason not in ResolutionReason.values:
            raise ValueError(f"unknown resolution reason {reason!r}; expected one of "
                             f"{', '.join(ResolutionReason.values)}")
    allowed_from = DataAnomaly.REVIEW_MOVES[target][0]
    outcome = ReviewOutcome(target=target, by=by, at=timezone.now(), reason=reason)
    with transaction.atomic():
        rows = (DataAnomaly.objects.select_for_update()
                .filter(pk__in=selection.order_by().values("pk"))
                .order_by("pk")  # one lock order for every reviewer: two bulk reviews cannot deadlock
                .values_list("pk", "resolution_status"))
        for pk, status in rows:
            if status in allowed_from:
                outcome.moved.append(pk)
            else:
                outcome.refused.append((pk, status))
        changes = DataAnomaly.review_changes(target, by, outcome.at, note=note, reason=reason)
        updated = 0
        for start in range(0, len(outcome.moved), UPDATE_BATCH):
            batch = outcome.moved[start:start + UPDATE_BATCH]
            updated += DataAnomaly.objects.filter(pk__in=batch, resolution_status__in=allowed_from).update(**changes)
        if updated != len(outcome.moved):  # the locks rule this out; if it ever happens, write nothing
            raise RuntimeError(f"review moved {updated} of {len(outcome.moved)} locked anomalies; rolled back")
    return outcome
