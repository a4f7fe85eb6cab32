"""Admin screens: review lists, actions that call the service layer, anomaly charts (the site and its
dashboard: ``integrity.admin_site``).

Django's admin autodiscovery imports this package; importing its modules registers every screen:
``base`` (what every screen shares: strict lists, storable form values, action reporting),
``instruments`` (instruments, candles, series statistics), ``runs`` (backfill executions, failure
tracking, health runs), ``anomalies`` (anomaly review, the duplicate log), ``rejected`` (the
quarantine of bars validation refused) and ``closures`` (an instrument's extra closed time);
``object_actions`` puts the buttons for what a reviewer does next on an object's page.

Audit tables (duplicate log, health runs, backfill executions, rejected bars) and candles are
read-only; anomalies and failure tracking change only through their buttons and bulk actions. No model has foreign
keys, so there is nothing for ``list_select_related`` to join: every list is the page query plus the
paginator's count and the filters' choices, whatever the number of rows (tests/test_admin.py).
"""

from .anomalies import DataAnomalyAdmin, DuplicateRecordLogAdmin
from .base import IntegrityModelAdmin, ReadOnlyAdmin, StorableJSONField, StrictChangeList
from .closures import InstrumentClosureAdmin
from .instruments import (
    CandleAdmin,
    CandleSourceFilter,
    EstimatedCountPaginator,
    InstrumentAdmin,
    InstrumentForm,
    SeriesStatsAdmin,
)
from .rejected import RejectedCandleAdmin
from .runs import BackfillStateAdmin, HealthCheckRunAdmin, SymbolFailureTrackingAdmin

__all__ = [
    "BackfillStateAdmin", "CandleAdmin", "CandleSourceFilter", "DataAnomalyAdmin", "DuplicateRecordLogAdmin",
    "EstimatedCountPaginator", "HealthCheckRunAdmin", "InstrumentAdmin", "InstrumentClosureAdmin", "InstrumentForm",
    "IntegrityModelAdmin", "ReadOnlyAdmin", "RejectedCandleAdmin", "SeriesStatsAdmin", "StorableJSONField",
    "StrictChangeList", "SymbolFailureTrackingAdmin",
]
