"""The admin's side of queued work: the "no worker is running" note on replies that queued a backfill
("Backfill now", "Retry", "Re-fetch this range"), and the action that cancels pending executions
(``integrity.backfill.cancel``). ``integrity.admin`` wires them into its screens."""

from __future__ import annotations

from ..backfill import cancel_pending_backfills
from ..health.workers import no_worker_note


def no_worker_sentence() -> str:
    """After a reply that queued work: the sentence to add when no django-q2 cluster is alive to run it
    ("" when one is)."""
    note = no_worker_note()
    if not note:
        return ""
    return (f"{note[:1].upper()}{note[1:]}: the queued backfills wait until a worker runs them (or cancel them: "
            "Backfill executions → “Cancel selected pending backfills”).")


def cancel_selected_pending(request, queryset) -> tuple[list[str], list[str]]:
    """Cancel the pending executions of ``queryset`` (as the API's cancel does): (cancelled, refused)."""
    cancelled, skipped = cancel_pending_backfills(queryset, by=f"admin:{request.user.get_username()}",
                                                  reason="cancelled in the admin")
    refused = [f"{s.symbol} {s.timeframe} ({s.execution_id}) not cancelled: it is {s.status}"
               + (" (its worker holds it; stop the worker to end it)" if s.status == "in_progress" else "")
               for s in skipped]
    return [f"{s.symbol} {s.timeframe} ({s.execution_id})" for s in cancelled], refused
