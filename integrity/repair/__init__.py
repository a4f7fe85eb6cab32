"""Self-healing repair: an anomaly's range re-fetched from the instrument's provider, then re-checked.

A repair is a tracked backfill (``integrity.backfill``: the same claim, so the same single-active
guarantee per series) of exactly the anomaly's period plus ``BACKFILL_OVERLAP_BARS`` bars each side,
``requested_by`` naming the anomaly, followed by a re-check of just that range with the anomaly's
own detector (``recheck``):

- the bars are now there and pass → resolved ``fixed``, linked to the execution;
- the source has no such bars either (a gap the completed backfill could not fill) → resolved
  ``missing_at_source``, which no scan reopens, so it is never alerted again;
- the source has the same suspicious value (an outlier, an invalid bar) → stays open with
  "confirmed at source: <value>" for a person to decide;
- the provider fails (or the series is busy) → stays open; the backfill's failure counts in the
  symbol's failure tracking like any other.

Every attempt is appended to the anomaly's ``details["repairs"]`` (at, execution id, outcome, range).
The doors: ``manage.py repair_anomalies`` (synchronous), ``POST /api/v1/anomalies/{id}/repair/`` and
the admin (claimed now, run by the queue: ``integrity.tasks.request_repair``), and the health job,
which repairs new gap and invalid-bar anomalies before it alerts (``auto_repair``).
"""

from .service import (
    REPAIRABLE_TYPES,
    RepairError,
    RepairOutcome,
    auto_repair,
    claim_repair,
    repair_anomalies,
    repair_anomaly,
    repair_range,
    repaired_anomaly_id,
    run_repair_execution,
)

__all__ = [
    "REPAIRABLE_TYPES",
    "RepairError",
    "RepairOutcome",
    "auto_repair",
    "claim_repair",
    "repair_anomalies",
    "repair_anomaly",
    "repair_range",
    "repaired_anomaly_id",
    "run_repair_execution",
]
