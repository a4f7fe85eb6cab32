"""The seed's four tables exist with every listed column and index (introspected, PostgreSQL)."""

from __future__ import annotations

import pytest
from django.db import connection

pytestmark = [
    pytest.mark.django_db,
    # Column types (uuid, bigint[], timestamptz) and index definitions are read from PostgreSQL's
    # catalog; the SQLite variant of the same tables is exercised by every other test.
    pytest.mark.postgres_only,
]

SEED_COLUMNS = {
    "backfill_state_persistent": {
        "id": "bigint", "execution_id": "uuid", "symbol": "character varying",
        "asset_class": "character varying", "timeframe": "character varying",
        "status": "character varying", "started_at": "timestamp with time zone",
        "completed_at": "timestamp with time zone", "records_inserted": "integer",
        "error_message": "text", "retry_count": "integer",
        "created_at": "timestamp with time zone", "updated_at": "timestamp with time zone",
    },
    "data_anomalies": {
        "id": "bigint", "symbol": "character varying", "timeframe": "character varying",
        "anomaly_type": "character varying", "detected_at": "timestamp with time zone",
        "severity": "character varying", "description": "text", "affected_rows": "integer",
        "resolution_status": "character varying", "created_at": "timestamp with time zone",
    },
    "duplicate_records_log": {
        "id": "bigint", "symbol": "character varying", "timeframe": "character varying",
        "candle_time": "timestamp with time zone", "duplicate_count": "integer",
        "duplicate_ids": "ARRAY", "cleaned_at": "timestamp with time zone",
        "created_at": "timestamp with time zone",
    },
    "symbol_failure_tracking": {
        "id": "bigint", "symbol": "character varying", "consecutive_failures": "integer",
        "last_failure_at": "timestamp with time zone", "last_success_at": "timestamp with time zone",
        "alert_sent": "boolean", "alert_sent_at": "timestamp with time zone",
        "created_at": "timestamp with time zone", "updated_at": "timestamp with time zone",
    },
    "candles": {
        "id": "bigint", "symbol": "character varying", "timeframe": "character varying",
        "ts": "timestamp with time zone", "open": "double precision", "high": "double precision",
        "low": "double precision", "close": "double precision", "volume": "double precision",
        "source": "character varying", "ingested_at": "timestamp with time zone",
        "updated_at": "timestamp with time zone",
    },
}

VARCHAR_LENGTHS = {
    ("backfill_state_persistent", "symbol"): 50,
    ("backfill_state_persistent", "asset_class"): 20,
    ("backfill_state_persistent", "timeframe"): 20,
    ("backfill_state_persistent", "status"): 50,
    ("data_anomalies", "anomaly_type"): 100,
}

# (table, indexed columns in order, with DESC where the seed says so)
SEED_INDEXES = [
    ("backfill_state_persistent", "(symbol, status)"),
    ("backfill_state_persistent", "(execution_id)"),
    ("backfill_state_persistent", "(created_at DESC)"),
    ("data_anomalies", "(symbol, detected_at DESC)"),
    ("data_anomalies", "(severity, resolution_status)"),
    ("duplicate_records_log", "(symbol, candle_time)"),
    ("duplicate_records_log", "(cleaned_at DESC)"),
    ("symbol_failure_tracking", "(consecutive_failures DESC)"),
    ("symbol_failure_tracking", "(alert_sent, consecutive_failures)"),
    ("candles", "(symbol, timeframe, ts)"),
]


def columns(table):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT column_name, data_type, character_maximum_length FROM information_schema.columns "
            "WHERE table_name = %s",
            [table],
        )
        return {name: (dtype, length) for name, dtype, length in cursor.fetchall()}


def index_definitions(table):
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s", [table])
        return [row[0] for row in cursor.fetchall()]


@pytest.mark.parametrize("table", sorted(SEED_COLUMNS))
def test_every_seed_column_exists_with_its_type(table):
    found = columns(table)
    for column, dtype in SEED_COLUMNS[table].items():
        assert column in found, f"{table}.{column} missing"
        assert found[column][0] == dtype, f"{table}.{column} is {found[column][0]}, expected {dtype}"


def test_varchar_lengths_match_the_seed():
    for (table, column), length in VARCHAR_LENGTHS.items():
        assert columns(table)[column][1] == length


@pytest.mark.parametrize("table,cols", SEED_INDEXES)
def test_every_seed_index_exists(table, cols):
    defs = index_definitions(table)
    assert any(d.endswith(f"btree {cols}") for d in defs), f"no index {cols} on {table}: {defs}"


def test_execution_id_is_unique():
    defs = index_definitions("backfill_state_persistent")
    assert any("UNIQUE" in d and d.endswith("(execution_id)") for d in defs)


def test_symbol_is_unique_in_failure_tracking():
    defs = index_definitions("symbol_failure_tracking")
    assert any("UNIQUE" in d and d.endswith("(symbol)") for d in defs)
