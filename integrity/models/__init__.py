"""The integrity data model: one module per table family, every model importable from here.

The four seed tables keep their exact names and columns (``backfill_state_persistent``,
``data_anomalies``, ``duplicate_records_log``, ``symbol_failure_tracking``); what we add is added,
never renamed. Enumerations are ``TextChoices`` with a database CHECK constraint, and invariants the
database can enforce (one active backfill per series, status values) are enforced there.

- ``instruments``: the watchlist, the candles, per-series statistics
- ``backfill``: backfill executions and their lifecycle, per-symbol failure streaks
- ``anomalies``: findings and their review lifecycle
- ``logs``: the duplicate cleanup audit log, health job runs
- ``closures``: extra closed time per instrument (holidays, outages) and their loader
- ``rejected``: the quarantine of bars refused at ingest (``rejected_candles``)
- ``reconcile``: the staging table of reference bars a reconciliation joins with (``reference_bars``)
- ``base``: what they share (the choices CHECK, asset classes, InvalidTransition)
"""

from ..timeframes import Timeframe
from .anomalies import STICKY_REASONS, AnomalyType, DataAnomaly, ResolutionReason, ResolutionStatus, Severity
from .backfill import ACTIVE_STATUSES, TERMINAL_STATUSES, BackfillState, BackfillStatus, SymbolFailureTracking
from .base import AssetClass, InvalidTransition
from .closures import InstrumentClosure, closures_by_symbol, closures_for
from .instruments import Candle, Instrument, SeriesStats
from .logs import BigIntegerArrayField, DuplicateKeptBy, DuplicateRecordLog, HealthCheckRun, HealthStatus
from .reconcile import ReferenceBar
from .rejected import RejectedCandle

__all__ = [
    "AssetClass",
    "Timeframe",
    "Instrument",
    "Candle",
    "BackfillStatus",
    "BackfillState",
    "InvalidTransition",
    "Severity",
    "AnomalyType",
    "ResolutionStatus",
    "ResolutionReason",
    "STICKY_REASONS",
    "DataAnomaly",
    "DuplicateKeptBy",
    "DuplicateRecordLog",
    "SymbolFailureTracking",
    "HealthStatus",
    "HealthCheckRun",
    "SeriesStats",
    "ACTIVE_STATUSES",
    "TERMINAL_STATUSES",
    "BigIntegerArrayField",
    "InstrumentClosure",
    "closures_by_symbol",
    "closures_for",
    "RejectedCandle",
    "ReferenceBar",
]
