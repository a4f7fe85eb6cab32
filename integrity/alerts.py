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
    * ``apprise`` — when ``ALERT_APPRISE_URLS`` is set; the same alert sent through apprise to each of
      those URLs (PagerDuty, Opsgenie, Teams, Telegram, ntfy, ...; one apprise URL each). A URL that
      fails fails the channel — the others are still sent to. URLs carry tokens: an error names a URL
      by its position and scheme only, and apprise's own log lines have every part of the URLs masked.

Every alert is composed here (``symbol_failing_alert``, ``symbol_recovered_alert``,
``series_stale_alert``, ``series_fresh_alert``, ``critical_anomalies_alert``), whoever raises it.
Callers decide *whether* to alert — de-duplication lives with the state that knows, always as a
compare-and-set update: ``symbol_failure_tracking.alert_sent``, ``data_anomalies.alert_sent_at``,
``series_stats.stale_alert_sent_at``. Delivery never breaks the caller: a channel that fails is
logged and reported in the outcome, and the other channels still run.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.utils import timezone

from .conf import conf
from .timeframes import iso

logger = logging.getLogger("integrity.alerts")

Channel = Callable[["Alert"], None]

# Items (series, anomalies) named in one digest alert's text; its context lists more.
MAX_IN_ALERT_TEXT = 50


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


# --- channels ----------------------------------------------------------------------------------


def _log_channel(alert: Alert) -> None:
    logger.warning("ALERT %s: %s — %s", alert.kind, alert.subject, alert.message,
                   extra={"alert_kind": alert.kind, "alert_severity": alert.severity})


def email_recipients() -> list[str]:
    return conf.ALERT_EMAIL_RECIPIENTS


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

    url = conf.ALERT_WEBHOOK_URL
    timeout = conf.ALERT_WEBHOOK_TIMEOUT
    retries = max(0, conf.ALERT_WEBHOOK_RETRIES)
    backoff = conf.ALERT_WEBHOOK_BACKOFF
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


class AppriseError(Exception):
    pass


# The loggers that see apprise's URLs while it sends: its own, and the HTTP client's under it (requests).
APPRISE_LOGGERS = ("apprise", "urllib3.connectionpool")
# apprise's notification types, by alert severity (anything else: failure).
APPRISE_TYPES = {"low": "success", "medium": "warning", "warning": "warning"}


def _url_parts(urls: Sequence[str]) -> list[str]:
    """The parts of the URLs that may be secrets (hosts, users, tokens, paths, query values), longest first."""
    parts = {part for url in urls for part in re.split(r"[/:@?&=#,;+ ]+", url.partition("://")[2]) if len(part) >= 3}
    return sorted(parts, key=len, reverse=True)


def redact(text: str, urls: Sequence[str]) -> str:
    """``text`` with every part of ``urls`` (but the schemes) masked."""
    for part in _url_parts(urls):
        text = text.replace(part, "***")
    return text


class _MaskUrls(logging.Filter):
    """Masks the configured apprise URLs' parts in the records of ``APPRISE_LOGGERS`` (attached while sending)."""

    def __init__(self, urls: Sequence[str]):
        super().__init__()
        self.urls = urls

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 — a malformed record: keep none of it rather than risk a token
            message = "(unformattable log record)"
        record.msg, record.args = redact(message, self.urls), ()
        return True


def _apprise_channel(alert: Alert) -> None:
    import apprise

    urls = conf.ALERT_APPRISE_URLS
    body = alert.text
    if alert.context:
        body += "\n\nDetails:\n" + json.dumps(alert.context, indent=2, default=str, sort_keys=True)
    title = " ".join(f"[marketdata {alert.severity}] {alert.subject}".split())[:250]
    failures = []
    mask = _MaskUrls(urls)
    loggers = [logging.getLogger(name) for name in APPRISE_LOGGERS]
    for each in loggers:
        each.addFilter(mask)
    try:
        for number, url in enumerate(urls, start=1):
            name = f"URL #{number} ({url.partition('://')[0] or '?'})"  # never the URL itself: it holds tokens
            sender = apprise.Apprise()
            if not sender.add(url):
                failures.append(f"{name}: not a valid apprise URL")
            elif not sender.notify(body=body, title=title,
                                   notify_type=APPRISE_TYPES.get(alert.severity, "failure")):
                failures.append(f"{name}: not delivered")
    finally:
        for each in loggers:
            each.removeFilter(mask)
    if failures:
        raise AppriseError(redact(f"apprise delivery failed for {len(failures)} of {len(urls)} URL(s): "
                                  + "; ".join(failures), urls))


def get_channels() -> list[tuple[str, Channel]]:
    """The delivery channels in force, read from settings on every call. The log channel is first."""
    channels: list[tuple[str, Channel]] = [("log", _log_channel)]
    if email_recipients():
        channels.append(("email", _email_channel))
    if conf.ALERT_WEBHOOK_URL:
        channels.append(("webhook", _webhook_channel))
    if conf.ALERT_APPRISE_URLS:
        channels.append(("apprise", _apprise_channel))
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
    return conf.ALERT_RECOVERY_NOTICES


# --- composition: every alert the app raises -----------------------------------------------------


def _more(total: int) -> list[str]:
    return [f"… and {total - MAX_IN_ALERT_TEXT} more"] if total > MAX_IN_ALERT_TEXT else []


def _first_names(items: Sequence[Any]) -> str:
    return ", ".join(f"{s.symbol} {s.timeframe}" for s in items[:3]) + (" …" if len(items) > 3 else "")


def symbol_failing_alert(symbol: str, consecutive_failures: int, last_error: str | None) -> Alert:
    """A symbol reached the consecutive-failure threshold (sent once, re-armed by a success)."""
    return Alert(
        kind="symbol_failing",
        subject=f"{symbol}: {consecutive_failures} consecutive backfill failures",
        message=f"Last error: {last_error or 'unknown'}",
        severity="high",
        context={"symbol": symbol, "consecutive_failures": consecutive_failures},
    )


def symbol_recovered_alert(symbol: str) -> Alert:
    return Alert(kind="symbol_recovered", subject=f"{symbol} recovered",
                 message=f"{symbol}: a backfill succeeded again.", severity="low", context={"symbol": symbol})


def series_stale_alert(newly: Sequence[Any], grace_minutes: int, max_listed: int) -> Alert:
    """One digest of the series that became stale (``SeriesFreshness`` items, sorted)."""
    lines = []
    for s in newly[:MAX_IN_ALERT_TEXT]:
        if s.last_bar is None:
            lines.append(f"- {s.symbol} {s.timeframe}: no bars stored")
        else:
            lines.append(f"- {s.symbol} {s.timeframe}: last bar {s.last_bar:%Y-%m-%d %H:%M} UTC, "
                         f"bars due since {s.due_at:%Y-%m-%d %H:%M} UTC missing for {s.lag_hours:.1f} h "
                         f"(expected {s.expected_bar:%Y-%m-%d %H:%M})")
    lines += _more(len(newly))
    return Alert(
        kind="series_stale",
        subject=f"{len(newly)} series became stale: {_first_names(newly)}",
        message=(f"Bars due at a scheduled backfill missing for more than {grace_minutes} min:\n"
                 + "\n".join(lines)),
        severity="high",
        context={"series": [s.as_dict() for s in newly[:max_listed]], "count": len(newly),
                 "grace_minutes": grace_minutes},
    )


def series_fresh_alert(recovered: Sequence[Any], max_listed: int) -> Alert:
    """One digest of the series fresh again (sent with ``ALERT_RECOVERY_NOTICES``)."""
    return Alert(
        kind="series_fresh",
        subject=f"{len(recovered)} series fresh again: {_first_names(recovered)}",
        message="\n".join(f"- {s.symbol} {s.timeframe}: last bar {iso(s.last_bar)}"
                          for s in recovered[:MAX_IN_ALERT_TEXT]),
        severity="low",
        context={"series": [s.as_dict() for s in recovered[:max_listed]], "count": len(recovered)},
    )


def critical_anomalies_alert(anomalies: Sequence[Any], max_listed: int) -> Alert:
    """One digest of new open critical anomalies (``DataAnomaly`` rows, oldest first)."""
    listed = "\n".join([f"- #{a.pk} {a.symbol} {a.timeframe} {a.anomaly_type}: {a.description}"
                        for a in anomalies[:MAX_IN_ALERT_TEXT]] + _more(len(anomalies)))
    first = anomalies[0]
    subject = (f"critical {first.anomaly_type} on {first.symbol} {first.timeframe}" if len(anomalies) == 1
               else f"{len(anomalies)} new critical anomalies")
    return Alert(
        kind="critical_anomaly",
        subject=subject,
        message=listed,
        severity="critical",
        context={"anomalies": [{"id": a.pk, "symbol": a.symbol, "timeframe": a.timeframe,
                                "anomaly_type": a.anomaly_type, "description": a.description,
                                "period_start": iso(a.period_start), "period_end": iso(a.period_end)}
                               for a in anomalies[:max_listed]],
                 "count": len(anomalies)},
    )
