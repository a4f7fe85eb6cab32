"""The admin's side of queued work: the "no worker is running" note on replies that queued a backfill
("Backfill now", "Retry"), and the action that cancels pending executions
(``integrity.backfill.cancel``). ``integrity.admin`` wires them into its screens."""

from __future__ import annotations

from django.contrib import messages

from ..backfill import cancel_pending_backfills
from ..health.workers import no_worker_note


def note_no_worker(modeladmin, request) -> None:
    """After a reply that queued work: say so when no django-q2 cluster is alive to run it."""
    note = no_worker_note()
    if note:
        modeladmin.message_user(
            request, f"{note}: the queued backfills wait until a worker runs them (or cancel them: "
                     "Backfill executions → “Cancel selected pending backfills”)", messages.WARNING)


def cancel_selected_pending(modeladmin, request, queryset) -> None:
    cancelled, skipped = cancel_pending_backfills(queryset, by=f"admin:{request.user.get_username()}",
                                                  reason="cancelled in the admin")
    if cancelled:
        listed = ", ".join(f"{s.symbol} {s.timeframe} ({s.execution_id})" for s in cancelled[:20])
        modeladmin.message_user(request, f"cancelled: {len(cancelled)} — {listed}", messages.SUCCESS)
    for state in skipped[:20]:
        modeladmin.message_user(
            request, f"{state.symbol} {state.timeframe} ({state.execution_id}) not cancelled: it is {state.status}"
            + (" (its worker holds it; stop the worker to end it)" if state.status == "in_progress" else ""),
            messages.WARNING)
    if not cancelled and not skipped:
        modeladmin.message_user(request, "nothing to do", messages.INFO)
