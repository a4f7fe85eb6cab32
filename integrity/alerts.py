"""Alerts. Every alert is logged; further channels (email, webhook) plug in via ``ALERT_CHANNELS``.

Callers decide *whether* to alert (de-duplication lives with the state that knows: e.g.
``symbol_failure_tracking.alert_sent``); this module only delivers, and a channel that fails is
logged and never breaks the caller or the other channels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("integrity.alerts")


@dataclass
class Alert:
    kind: str  # e.g. "symbol_failing", "symbol_recovered", "series_stale", "critical_anomaly"
    subject: str
    message: str
    severity: str = "high"
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return f"[{self.severity.upper()}] {self.subject}\n{self.message}"


def _log_channel(alert: Alert) -> None:
    logger.warning("ALERT %s: %s — %s", alert.kind, alert.subject, alert.message,
                   extra={"alert_kind": alert.kind, "alert_severity": alert.severity})


def get_channels():
    """The delivery channels in force. The log channel is always first."""
    return [("log", _log_channel)]


def send_alert(alert: Alert) -> dict[str, str]:
    """Deliver an alert on every channel; returns {channel: "sent" | "failed: …"}."""
    outcome: dict[str, str] = {}
    for name, channel in get_channels():
        try:
            channel(alert)
            outcome[name] = "sent"
        except Exception as exc:  # a broken channel must not break the job or the other channels
            logger.exception("alert channel %s failed for %s", name, alert.kind)
            outcome[name] = f"failed: {exc}"
    return outcome


def recovery_notices_enabled() -> bool:
    from django.conf import settings

    return bool(getattr(settings, "ALERT_RECOVERY_NOTICES", False))
