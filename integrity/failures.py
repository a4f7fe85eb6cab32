"""Consecutive-failure tracking per symbol, with an alert raised once at the threshold.

All updates are single SQL statements or compare-and-set updates, so concurrent finishing backfills
of the same symbol cannot lose a count or send the alert twice.
"""

from __future__ import annotations

import logging

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from .alerts import recovery_notices_enabled, send_alert, symbol_failing_alert, symbol_recovered_alert
from .conf import conf
from .models import SymbolFailureTracking

logger = logging.getLogger(__name__)


def _ensure_row(symbol: str) -> None:
    if SymbolFailureTracking.objects.filter(symbol=symbol).exists():
        return
    try:
        with transaction.atomic():
            SymbolFailureTracking.objects.create(symbol=symbol)
    except IntegrityError:
        pass  # created concurrently: fine, it exists now


def track_symbol_failure(symbol: str, success: bool, error: str = "") -> SymbolFailureTracking:
    """Record the outcome of a finished execution of ``symbol``.

    Failure: consecutive_failures += 1, last_failure_at = now; at the threshold (3 by default) an
    alert is sent exactly once (alert_sent/alert_sent_at). Success: the count resets to 0,
    last_success_at = now, and the alert is re-armed (alert_sent = False).
    """
    _ensure_row(symbol)
    now = timezone.now()
    rows = SymbolFailureTracking.objects.filter(symbol=symbol)
    if success:
        was_alerted = rows.filter(alert_sent=True).update(
            consecutive_failures=0, last_success_at=now, alert_sent=False, updated_at=now
        )
        if not was_alerted:
            rows.update(consecutive_failures=0, last_success_at=now, updated_at=now)
        elif recovery_notices_enabled():
            send_alert(symbol_recovered_alert(symbol))
        return rows.get()

    rows.update(
        consecutive_failures=F("consecutive_failures") + 1,
        last_failure_at=now,
        last_error=(error or "")[:2000],
        updated_at=now,
    )
    threshold = conf.FAILURE_ALERT_THRESHOLD
    # Compare-and-set: only the caller that flips alert_sent sends the alert.
    won = rows.filter(alert_sent=False, consecutive_failures__gte=threshold).update(
        alert_sent=True, alert_sent_at=now
    )
    tracking = rows.get()
    if won:
        send_alert(symbol_failing_alert(symbol, tracking.consecutive_failures, tracking.last_error))
    return tracking


def reset_symbol_failures(symbol: str) -> int:
    """Operator reset: zero the count and re-arm the alert. Returns rows changed."""
    return SymbolFailureTracking.objects.filter(symbol=symbol).update(
        consecutive_failures=0, alert_sent=False, updated_at=timezone.now()
    )
