"""Alerts: delivery on every configured channel.

Channels, in order:
    * ``log`` — always; a WARNING on the ``integrity.alerts`` logger.
    * ``email`` — when ``ALERT_EMAIL_RECIPIENTS`` is set; sent through Django's mail backend
      (``EMAIL_HOST``, ``EMAIL_PORT``, ``EMAIL_HOST_USER``, ``EMAIL_HOST_PASSWORD``, ``EMAIL_USE_TLS``,
      ``DEFAULT_FROM_EMAIL``).
    * ``webhook`` — when ``ALERT_WEBHOOK_URL`` is set; a JSON POST whose ``text`` field is what Slack
      (and Mattermost, Teams' Slack-compatible hooks, ...) display, plus structured fields for
      machines. Connection errors, timeouts, 429 and 5xx answers are retried
      ``ALERT_WEBHOOK_RETRIES`` times with exponential backoff; other 4xx answers are not (retrying
      a bad URL or a rejected payload cannot help).

Callers decide *whether* to alert — de-duplication lives with the state that knows, always as a
compare-and-set update: ``symbol_failure_tracking.alert_sent``, ``data_anomalies.alert_sent_at``,
``series_stats.stale_alert_sent_at``. This module only delivers, and a channel that fails is logged
and reported in the outcome; it never breaks the caller or the other channels.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.utils import timezone

logger = logging.getLogger("integrity.alerts")

Channel = Callable[["Alert"], None]


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

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "subject": self.subject, "message": self.message,
                "severity": self.severity, "context": self.context}


# --- channels ----------------------------------------------------------------------------------


def _log_channel(alert: Alert) -> None:
    logger.warning("ALERT %s: %s — %s", alert.kind, alert.subject, alert.message,
                   extra={"alert_kind": alert.kind, "alert_severity": alert.severity})


def email_recipients() -> list[str]:
    value = getattr(settings, "ALERT_EMAIL_RECIPIENTS", None) or []
    if isinstance(value, str):
        value = value.split(",")
    return [address.strip() for address in value if address and address.strip()]


def _email_channel(alert: Alert) -> None:
    from django.core.mail import EmailMessage

    body = alert.text
    if alert.context:
        body += "\n\nDetails:\n" + json.dumps(alert.context, indent=2, default=str, sort_keys=True)
    message = EmailMessage(
        subject=" ".join(f"[marketdata {alert.severity}] {alert.subject}".split())[:250],  # no header injection
        body=body,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=email_recipients(),
    )
    message.send(fail_silently=False)


class WebhookError(Exception):
    pass


def webhook_payload(alert: Alert) -> dict[str, Any]:
    """Slack-compatible ``text`` plus the structured alert."""
    return {
        "text": alert.text,
        "kind": alert.kind,
        "severity": alert.severity,
        "subject": alert.subject,
        "message": alert.message,
        "context": alert.context,
        "sent_at": timezone.now().isoformat(),
        "source": "marketdata-integrity",
    }


def _webhook_channel(alert: Alert) -> None:
    import httpx

    url = settings.ALERT_WEBHOOK_URL
    timeout = float(getattr(settings, "ALERT_WEBHOOK_TIMEOUT", 5.0))
    retries = max(0, int(getattr(settings, "ALERT_WEBHOOK_RETRIES", 2)))
    backoff = float(getattr(settings, "ALERT_WEBHOOK_BACKOFF", 0.5))
    body = json.dumps(webhook_payload(alert), default=str)
    headers = {"Content-Type": "application/json", "User-Agent": "marketdata-integrity"}
    last_error = "no attempt made"
    with httpx.Client(timeout=timeout) as client:
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(backoff * 2 ** (attempt - 1))
            try:
                response = client.post(url, content=body, headers=headers)
            except httpx.TransportError as exc:  # refused, DNS, timeouts: worth another try
                last_error = f"{exc.__class__.__name__}: {exc}"
                continue
            if response.status_code < 300:
                return
            last_error = f"HTTP {response.status_code}: {response.text[:200]}"
            if response.status_code != 429 and response.status_code < 500:
                break  # the hook rejected the request itself; retrying cannot help
    raise WebhookError(f"webhook delivery failed after {attempt + 1} attempt(s): {last_error}")


def get_channels() -> list[tuple[str, Channel]]:
    """The delivery channels in force, read from settings on every call. The log channel is first."""
    channels: list[tuple[str, Channel]] = [("log", _log_channel)]
    if email_recipients():
        channels.append(("email", _email_channel))
    if getattr(settings, "ALERT_WEBHOOK_URL", ""):
        channels.append(("webhook", _webhook_channel))
    return channels


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
    return bool(getattr(settings, "ALERT_RECOVERY_NOTICES", False))
