"""The admin site: Django's own, with the project's titles and the integrity dashboard.

``IntegrityAdminConfig`` (``integrity.apps``) makes it the default site, so ``admin.site`` — which
every ``@admin.register`` in the ``integrity.admin`` package, ``django.contrib.auth`` and ``django_q`` uses and
``marketdata_site/urls.py`` mounts — is an ``IntegrityAdminSite``. This module must not import
``integrity.admin``: the site is built while the admin modules are being discovered.
"""

from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import path

from .health.summaries import open_anomaly_totals
from .health.workers import worker_status
from .models import (
    ACTIVE_STATUSES,
    BackfillState,
    DataAnomaly,
    HealthCheckRun,
    ResolutionStatus,
    SeriesStats,
    SymbolFailureTracking,
)
from .timeframes import aware, utc_text


def dashboard_context() -> dict:
    # Counted as the health job counts them (status open); acknowledged ones are shown apart.
    totals = open_anomaly_totals()
    latest_run = HealthCheckRun.objects.order_by("-started_at").first()
    # The health job's report: {"stale_series": {"count": n, "series": [...], "truncated": bool}}.
    stale = (latest_run.results or {}).get("stale_series") if latest_run else None
    stale = stale if isinstance(stale, dict) else {}
    return {
        "by_severity": [{"severity": k, "n": n} for k, n in totals.by_severity.items()],
        "by_type": [{"anomaly_type": k, "n": n} for k, n in totals.by_type.items()],
        "open_total": totals.open,
        "acknowledged_total": DataAnomaly.objects.filter(resolution_status=ResolutionStatus.ACKNOWLEDGED).count(),
        "stale_series": [_readable_instants(row) for row in stale.get("series") or [] if isinstance(row, dict)],
        "stale_count": stale.get("count", 0),
        "stale_truncated": bool(stale.get("truncated")),
        "failing": list(SymbolFailureTracking.objects.filter(consecutive_failures__gt=0)
                        .order_by("-consecutive_failures", "symbol")[:50]),
        "active_backfills": list(BackfillState.objects.filter(status__in=ACTIVE_STATUSES).order_by("created_at")[:50]),
        "latest_run": latest_run,
        "workers": worker_status(),
        "coverage": list(SeriesStats.objects.order_by("coverage_pct", "symbol", "timeframe")[:100]),
    }


STALE_ROW_INSTANTS = ("last_bar", "expected_bar", "due_at")


def _readable_instants(row: dict) -> dict:
    """A stale series of the health run's report with its ISO instants as every screen shows them
    (``2026-03-02 14:00 UTC``); a value that is not an instant is shown as it is."""
    shown = dict(row)
    for key in STALE_ROW_INSTANTS:
        try:
            instant = aware(row.get(key))
        except (TypeError, ValueError):
            continue
        if instant is not None:
            shown[key] = utc_text(instant)
    return shown


class IntegrityAdminSite(admin.AdminSite):
    site_header = "marketdata-integrity"
    site_title = "marketdata-integrity"
    index_template = "admin/integrity/index.html"  # the index links the dashboard
    # No model menu beside every page: the review lists need the width (an anomaly's period end and
    # affected rows stay visible at 1,400 px); the index and the breadcrumbs lead everywhere.
    enable_nav_sidebar = False

    def get_urls(self):
        return [path("integrity/dashboard/", self.admin_view(self.dashboard_view), name="integrity-dashboard"),
                path("integrity/series/<path:symbol>/<str:timeframe>/", self.admin_view(self.series_view),
                     name="integrity-series"),
                *super().get_urls()]

    def series_view(self, request, symbol, timeframe):
        from .admin.series import series_page  # the admin package is imported after this module

        return series_page(self, request, symbol, timeframe)

    def dashboard_view(self, request):
        if not request.user.has_perm("integrity.view_dataanomaly"):
            raise PermissionDenied("the dashboard needs the permission to view data anomalies")
        context = {**self.each_context(request), "title": "Market-data integrity dashboard",
                   **dashboard_context()}
        return TemplateResponse(request, "admin/integrity/dashboard.html", context)
