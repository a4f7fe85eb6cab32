from django.urls import include, path
from rest_framework.routers import DefaultRouter

from . import reconcile, views
from .closures import ClosureViewSet
from .rejected import RejectedCandleViewSet

router = DefaultRouter()
router.register("backfills", views.BackfillViewSet, basename="backfill")
router.register("anomalies", reconcile.ReconcilingAnomalyViewSet, basename="anomaly")
router.register("duplicates", views.DuplicateLogViewSet, basename="duplicate")
router.register("symbol-failures", views.SymbolFailureViewSet, basename="symbol-failure")
router.register("instruments", reconcile.ReconcilingInstrumentViewSet, basename="instrument")
router.register("series", views.SeriesViewSet, basename="series")
router.register("rejected-candles", RejectedCandleViewSet, basename="rejected-candle")
router.register("closures", ClosureViewSet, basename="closure")

urlpatterns = [
    path("health/", views.HealthView.as_view(), name="api-health"),
    path("", include(router.urls)),
]
