"""Reconciliation: the stored bars compared with a second, *reference* source.

Every other check compares a series with itself or its calendar; the errors that hurt most are the
ones a series cannot see in itself — a wrong close that moves less than the outlier threshold, a
stale price the provider repeats, a bar shifted by a time-zone bug, a split applied to one range and
not another. An instrument may name a reference source (``Instrument.reference_provider`` and
``reference_options``, validated like the primary's); its bars are fetched through the same provider
layer (retries, limits, redaction) and never written to ``candles``.

A run (``reconcile``; the doors: ``manage.py reconcile``, the scheduled job, the API and the admin):

1. ``reference``: the series' reference and tolerances, its bars fetched and validated into memory;
2. ``compare``: staged into ``reference_bars`` under a run id, then one SQL statement joins them with
   the stored bars over the window and returns only the disagreeing pairs (deleted in the same
   transaction);
3. ``classify``: a Python post-pass over those few pairs — one finding per time-shifted range, per
   split/unit ratio range, per price mismatch, per run of missing bars;
4. ``service.record``: ``source_mismatch`` anomalies through ``quality.record``, for every series of
   the run at once; those of each series' window no longer found are resolved ``fixed``.

``repair.repair_from_reference``: a person's explicit action, with a note, that writes the
reference's bars for an anomaly's range through the normal backfill (a tracked execution) — never
automatic. See docs/reconciliation.md.
"""

from .reference import ReconcileError, ReferenceSeries, fetch_reference, reference_series
from .repair import reference_range, repair_from_reference
from .service import (
    ReconcileReport,
    SeriesReconciliation,
    compare_series,
    parse_since,
    plan_reconcile,
    reconcile,
)

__all__ = [
    "ReconcileError",
    "ReconcileReport",
    "ReferenceSeries",
    "SeriesReconciliation",
    "fetch_reference",
    "parse_since",
    "plan_reconcile",
    "reconcile",
    "compare_series",
    "reference_range",
    "reference_series",
    "repair_from_reference",
]
