"""Duplicate cleanup: keep the newest valid row of every duplicate (symbol, timeframe, ts) group.

``cleanup_duplicate_records`` finds every group of ``candles`` rows sharing (symbol, timeframe, ts),
keeps one, deletes the others and writes one ``duplicate_records_log`` row per group naming the
deleted ids, the kept id and the rule that chose it (``kept_by``):

- ``newest_valid``: the newest copy (latest ``ingested_at``, ties broken by the highest ``id``) among
  those that pass the OHLC rules. A newer copy that breaks them is deleted, not kept: a broken bar
  must never win over a good one.
- ``newest_none_valid``: no copy passes the OHLC rules, so the newest copy is kept (a later backfill
  of the range can replace it; the ``invalid_ohlc`` detector reports it meanwhile).

"Passes the OHLC rules" is the detectors' set-based predicate (``quality.sql.invalid_ohlc_sql``), the
SQL form of the value rules of ``integrity.validation`` (finite prices > 0, low <= open/close <= high,
finite volume >= 0). The time rules are the same for every copy of a bar, so they cannot choose.

How it runs (set-based, both databases):

1. One pass over ``candles`` (``GROUP BY symbol, timeframe, ts HAVING count(*) > 1``) numbers the
   duplicate groups in a stable order (symbol, timeframe, ts) into a session temporary table.
2. The groups are processed ``batch_size`` at a time by keyset on that dense group number, one
   transaction per batch. In the transaction one statement locks the live rows of the batch's
   groups (PostgreSQL: ``FOR UPDATE``; SQLite: the IMMEDIATE transaction already holds the write
   lock) and ranks them with ``row_number() OVER (PARTITION BY symbol, timeframe, ts ORDER BY
   invalid, ingested_at DESC, id DESC)`` (valid copies first), returning one row per group (size,
   kept id, ids to delete, whether the kept row is valid). Then
   one ``DELETE … WHERE id = ANY(…) RETURNING id`` (SQLite: ``IN (SELECT value FROM json_each(?))``)
   and one ``INSERT … SELECT`` of the batch's log rows from a JSON document (PostgreSQL:
   ``json_to_recordset``; SQLite: ``json_each``), then commit. Every statement is set-based; the
   ids and the log rows each travel as a single parameter.

Guarantees:

- The rows deleted are exactly the ids logged: the DELETE names only the ids the batch computed and
  its row count (PostgreSQL: the RETURNING ids) must equal them, otherwise the batch is rolled back
  and ``CleanupConflict`` is raised. Because the batch's rows are locked and re-read when the batch
  starts, a concurrent writer cannot change them in between, so a conflict means something broke
  the locking assumption; re-running is safe (it recomputes from live rows). The lock matters most
  for the kept row: without it a writer could delete the kept row while we delete its copies, and
  the bar would be lost altogether.
- A batch is all-or-nothing: any error inside it (including the test hook ``_before_commit``) rolls
  the batch back entirely — its candles are all still there and it has no log rows — while earlier
  batches stay committed. The error surfaces as ``CleanupError`` carrying the committed progress.
- Groups change under us gracefully: a group that lost its duplicates since step 1 (another cleanup,
  a writer) is skipped; a row inserted into a group since step 1 is ranked and locked with it.
- Dry run computes the same groups, kept ids, deleted ids and ``kept_by`` rules a real run would
  (same statements, without the lock and the writes) and writes nothing.

``duplicate_count`` is the number of rows the group had when it was cleaned, *including* the kept
row (so ``duplicate_count == len(duplicate_ids) + 1``): it is how many copies of the bar existed.

Called inside an outer transaction the batches become savepoints: each is still all-or-nothing, but
nothing is durable until the caller commits.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from integrity.models import DuplicateKeptBy, DuplicateRecordLog
from integrity.quality.record import resolve_cleaned_duplicates
from integrity.quality.sql import invalid_ohlc_sql
from integrity.timeframes import aware

logger = logging.getLogger(__name__)

__all__ = [
    "CleanupConflict",
    "CleanupError",
    "CleanupResult",
    "cleanup_duplicate_records",
]

DEFAULT_BATCH_SIZE = 1000
# How many group details a result keeps in memory; totals are always exact.
DEFAULT_KEEP_GROUPS = 1000

_GROUPS_TABLE = "integrity_cleanup_groups"


class CleanupError(Exception):
    """A cleanup stopped. Batches committed before the failing one stand; ``result`` says what they did."""

    def __init__(self, message: str, result: CleanupResult | None = None, batch_index: int | None = None):
        super().__init__(message)
        self.result = result
        self.batch_index = batch_index


class CleanupConflict(CleanupError):
    """The DELETE did not remove exactly the ids the batch computed; the batch was rolled back."""


@dataclass
class CleanupResult:
    run_id: uuid.UUID
    dry_run: bool
    symbol: str | None = None
    timeframe: str | None = None
    # Details of the first ``keep_groups`` groups (cleaned, or that would be cleaned in a dry run).
    groups: list[dict[str, Any]] = field(default_factory=list)
    groups_total: int = 0
    rows_deleted: int = 0  # in a dry run: rows that would be deleted
    batches: int = 0  # batch transactions committed (dry run: batches planned)
    # (symbol, timeframe) -> {"groups": n, "rows_deleted": m}; exact, one entry per touched series.
    series: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    groups_planned: int = 0  # duplicate groups found by the first pass
    # kept_by rule -> groups it decided; exact (e.g. {"newest_valid": 12, "newest_none_valid": 1}).
    kept_by: dict[str, int] = field(default_factory=dict)
    anomalies_resolved: int | None = None  # from integrity.quality.record, when available
    duration_seconds: float = 0.0
    keep_groups: int = DEFAULT_KEEP_GROUPS

    @property
    def groups_truncated(self) -> bool:
        return self.groups_total > len(self.groups)

    def add_batch(self, groups: list[dict[str, Any]]) -> None:
        self.batches += 1
        for group in groups:
            self.groups_total += 1
            deleted = len(group["deleted_ids"])
            self.rows_deleted += deleted
            self.kept_by[group["kept_by"]] = self.kept_by.get(group["kept_by"], 0) + 1
            counts = self.series.setdefault((group["symbol"], group["timeframe"]), {"groups": 0, "rows_deleted": 0})
            counts["groups"] += 1
            counts["rows_deleted"] += deleted
            if len(self.groups) < self.keep_groups:
                self.groups.append(group)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": str(self.run_id),
            "dry_run": self.dry_run,
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "groups_total": self.groups_total,
            "rows_deleted": self.rows_deleted,
            "batches": self.batches,
            "groups_planned": self.groups_planned,
            "kept_by": dict(sorted(self.kept_by.items())),
            "groups_truncated": self.groups_truncated,
            "series": [
                {"symbol": s, "timeframe": tf, **counts} for (s, tf), counts in sorted(self.series.items())
            ],
            "anomalies_resolved": self.anomalies_resolved,
            "duration_seconds": round(self.duration_seconds, 3),
            "groups": self.groups,
        }


Progress = Callable[[int, int], None]  # (groups done, groups planned), after every batch


def cleanup_duplicate_records(
    symbol: str | None = None,
    timeframe: str | None = None,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
    *,
    keep_groups: int = DEFAULT_KEEP_GROUPS,
    _before_commit: Callable[[int], None] | None = None,
) -> CleanupResult:
    """Delete all but the newest valid row of every duplicate candle group and log each group.

    ``batch_size`` is in groups per transaction. ``_before_commit(batch_index)`` (1-based) runs
    inside each batch's transaction after its writes, just before the commit: a test hook for
    injecting failures. Raises ``CleanupError`` (``CleanupConflict`` for a DELETE mismatch) when a
    batch fails; that batch is rolled back and earlier batches stay committed.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    started = time.perf_counter()
    result = CleanupResult(
        run_id=uuid.uuid4(), dry_run=dry_run, symbol=symbol, timeframe=timeframe, keep_groups=keep_groups
    )
    sql = _Sql(connection.vendor)
    with connection.cursor() as cursor:
        try:
            result.groups_planned = _number_groups(cursor, sql, symbol, timeframe)
            for batch_index, low in enumerate(range(0, result.groups_planned, batch_size), start=1):
                try:
                    groups = _run_batch(
                        cursor, sql, result.run_id, low, low + batch_size, dry_run, batch_index, _before_commit
                    )
                except CleanupError as exc:
                    exc.result, exc.batch_index = result, batch_index
                    raise
                except Exception as exc:
                    raise CleanupError(
                        f"batch {batch_index} failed and was rolled back ({type(exc).__name__}: {exc}); "
                        f"{result.batches} earlier batch(es) committed, {result.rows_deleted} rows deleted",
                        result, batch_index,
                    ) from exc
                result.add_batch(groups)
                if progress is not None:
                    progress(min(low + batch_size, result.groups_planned), result.groups_planned)
        finally:
            result.duration_seconds = time.perf_counter() - started
            _drop_groups_table(cursor, sql)

    if not dry_run:
        result.anomalies_resolved = _resolve_anomalies(symbol, timeframe)
    result.duration_seconds = time.perf_counter() - started
    # DEBUG, not INFO: the log handler writes to stdout, where ``cleanup_duplicates --format json``
    # prints its document; the run itself is recorded in duplicate_records_log under its run_id.
    logger.debug(
        "duplicate cleanup %s%s: %d groups, %d rows %s in %d batches (%.2fs)",
        result.run_id, " (dry run)" if dry_run else "", result.groups_total, result.rows_deleted,
        "would be deleted" if dry_run else "deleted", result.batches, result.duration_seconds,
    )
    return result


# --- SQL ----------------------------------------------------------------------------------------


class _Sql:
    """The few statements that differ between PostgreSQL and SQLite."""

    def __init__(self, vendor: str):
        self.postgres = vendor == "postgresql"
        if self.postgres:
            self.table = f"pg_temp.{_GROUPS_TABLE}"
            ts_type = "timestamptz"
        else:
            self.table = f"temp.{_GROUPS_TABLE}"
            ts_type = "datetime"  # the declared type makes Django's SQLite converter parse it
        self.create = (
            f"CREATE TEMPORARY TABLE {_GROUPS_TABLE} (gno integer PRIMARY KEY, symbol varchar(50) NOT NULL, "
            f"timeframe varchar(20) NOT NULL, ts {ts_type} NOT NULL, n integer NOT NULL)"
        )
        # The stable order (symbol, timeframe, ts) becomes a dense number: batches are keyset ranges.
        self.fill = (
            f"INSERT INTO {self.table} (gno, symbol, timeframe, ts, n) "
            "SELECT row_number() OVER (ORDER BY symbol, timeframe, ts), symbol, timeframe, ts, n "
            "FROM (SELECT symbol, timeframe, ts, count(*) AS n FROM candles {where} "
            "GROUP BY symbol, timeframe, ts HAVING count(*) > 1) AS d"
        )
        lock = "FOR UPDATE OF c" if self.postgres else ""
        id_list = "string_agg(CASE WHEN rn > 1 THEN id::text END, ',')" if self.postgres else \
            "group_concat(CASE WHEN rn > 1 THEN id END, ',')"
        # The batch's groups as they are now (rows locked on PostgreSQL), ranked within each group:
        # valid copies first, then newest first. One row per group that still has duplicates: its
        # size, the kept id, the ids to delete, and 1 if the kept row breaks the OHLC rules.
        self.plan = (
            "WITH grp AS ("
            " SELECT c.id, c.symbol, c.timeframe, c.ts, c.ingested_at, g.gno,"
            f" CASE WHEN {invalid_ohlc_sql()} THEN 1 ELSE 0 END AS invalid"
            f" FROM {self.table} AS g"
            " JOIN candles AS c ON c.symbol = g.symbol AND c.timeframe = g.timeframe AND c.ts = g.ts"
            " WHERE g.gno > %s AND g.gno <= %s {lock}"
            "), ranked AS ("
            " SELECT gno, symbol, timeframe, ts, id, invalid,"
            " row_number() OVER (PARTITION BY symbol, timeframe, ts"
            " ORDER BY invalid, ingested_at DESC, id DESC) AS rn,"
            " count(*) OVER (PARTITION BY symbol, timeframe, ts) AS n"
            " FROM grp"
            ") "
            f"SELECT symbol, timeframe, ts, n, max(CASE WHEN rn = 1 THEN id END), {id_list}, "
            "max(CASE WHEN rn = 1 THEN invalid END) "
            "FROM ranked GROUP BY gno, symbol, timeframe, ts, n HAVING n > 1 ORDER BY gno"
        )
        self.plan_locked = self.plan.format(lock=lock)
        self.plan_read = self.plan.format(lock="")
        columns = ("symbol, timeframe, candle_time, duplicate_count, duplicate_ids, kept_id, kept_by, run_id, "
                   "cleaned_at, created_at")
        log_table = DuplicateRecordLog._meta.db_table
        # The ids to delete and the batch's log rows each travel as ONE parameter (an array literal,
        # a JSON document): no per-row statements, no per-element adaptation on the client.
        if self.postgres:
            self.delete = "DELETE FROM candles WHERE id = ANY(%s::bigint[]) RETURNING id"
            self.insert_log = (
                f"INSERT INTO {log_table} ({columns}) "
                "SELECT g.symbol, g.timeframe, g.ts, g.n, g.ids, g.kept, g.kept_by, %s, %s, %s "
                "FROM json_to_recordset(%s::json) "
                "AS g(symbol text, timeframe text, ts timestamptz, n integer, ids bigint[], kept bigint, "
                "kept_by text)"
            )
        else:
            self.delete = "DELETE FROM candles WHERE id IN (SELECT value FROM json_each(%s))"
            self.insert_log = (
                f"INSERT INTO {log_table} ({columns}) "
                "SELECT json_extract(value, '$.symbol'), json_extract(value, '$.timeframe'),"
                " json_extract(value, '$.ts'), json_extract(value, '$.n'), json_extract(value, '$.ids'),"
                " json_extract(value, '$.kept'), json_extract(value, '$.kept_by'), %s, %s, %s "
                "FROM json_each(%s)"
            )

    def ids_param(self, ids: list[int]) -> str:
        if self.postgres:
            return "{" + ",".join(map(str, ids)) + "}"
        return json.dumps(ids)


def _number_groups(cursor, sql: _Sql, symbol: str | None, timeframe: str | None) -> int:
    """Step 1: the duplicate groups, numbered 1..n in (symbol, timeframe, ts) order. Returns n."""
    conditions, params = [], []
    if symbol:
        conditions.append("symbol = %s")
        params.append(symbol)
    if timeframe:
        conditions.append("timeframe = %s")
        params.append(timeframe)
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    _drop_groups_table(cursor, sql)
    cursor.execute(sql.create)
    with transaction.atomic():
        if sql.postgres:
            # A streaming GroupAggregate over the (symbol, timeframe, ts) index never spills; the
            # HashAggregate the planner tends to pick over millions of distinct keys spills to disk at
            # the default work_mem and is several times slower. Scoped to this statement.
            cursor.execute("SELECT current_setting('enable_hashagg')")
            previous = cursor.fetchone()[0]
            cursor.execute("SET LOCAL enable_hashagg = off")
        cursor.execute(sql.fill.format(where=where), params)
        count = cursor.rowcount
        if sql.postgres:
            cursor.execute("SELECT set_config('enable_hashagg', %s, true)", [previous])
    if count is None or count < 0:
        cursor.execute(f"SELECT count(*) FROM {sql.table}")
        count = cursor.fetchone()[0]
    if sql.postgres:
        # Temporary tables are never auto-analyzed: give the planner the row count so the batch join
        # walks candles' (symbol, timeframe, ts) index instead of scanning the table.
        cursor.execute(f"ANALYZE {sql.table}")
    return count


def _drop_groups_table(cursor, sql: _Sql) -> None:
    try:
        cursor.execute(f"DROP TABLE IF EXISTS {sql.table}")
    except Exception:  # a broken connection: the session (and its temporary table) is gone anyway
        logger.debug("could not drop %s", sql.table, exc_info=True)


def _run_batch(cursor, sql: _Sql, run_id: uuid.UUID, low: int, high: int, dry_run: bool, batch_index: int,
               before_commit: Callable[[int], None] | None) -> list[dict[str, Any]]:
    """One transaction: plan the groups numbered (low, high], delete their victims, log them."""
    with transaction.atomic():
        cursor.execute(sql.plan_read if dry_run else sql.plan_locked, [low, high])
        planned = [_group(*row) for row in cursor.fetchall()]
        if not dry_run and planned:
            victims = [i for _, g in planned for i in g["deleted_ids"]]
            cursor.execute(sql.delete, [sql.ids_param(victims)])
            # PostgreSQL returns the ids it deleted; SQLite's row count suffices there (the ids are
            # distinct and the DELETE names only them, so equal counts mean equal sets).
            deleted = len(cursor.fetchall()) if sql.postgres else cursor.rowcount
            if deleted != len(victims):
                raise CleanupConflict(
                    f"batch {batch_index}: computed {len(victims)} rows to delete but the DELETE removed "
                    f"{deleted}; the batch was rolled back (candles changed concurrently). Earlier batches "
                    "are committed; re-run to finish."
                )
            _insert_logs(cursor, sql, run_id, planned)
        if before_commit is not None:
            before_commit(batch_index)
    return [group for _, group in planned]


def _group(symbol, timeframe, ts, n, kept_id, deleted, kept_invalid) -> tuple[datetime, dict[str, Any]]:
    """A plan row (symbol, timeframe, ts, rows in group, kept id, "id,id,…", kept row invalid 0/1)
    → (ts, group dict)."""
    ts = aware(ts).astimezone(UTC)
    kept_by = DuplicateKeptBy.NEWEST_NONE_VALID if kept_invalid else DuplicateKeptBy.NEWEST_VALID
    return ts, {
        "symbol": symbol,
        "timeframe": timeframe,
        "candle_time": ts.isoformat(),
        "kept_id": int(kept_id),
        "kept_by": kept_by.value,
        "deleted_ids": sorted(int(i) for i in str(deleted).split(",")),
        "duplicate_count": int(n),
    }


def _insert_logs(cursor, sql: _Sql, run_id: uuid.UUID, planned: list[tuple[datetime, dict[str, Any]]]) -> None:
    """The batch's log rows, one INSERT … SELECT over a JSON document of the groups."""
    ops = connection.ops
    stamp = ops.adapt_datetimefield_value(timezone.now())
    document = json.dumps([
        {"symbol": g["symbol"], "timeframe": g["timeframe"], "n": g["duplicate_count"], "ids": g["deleted_ids"],
         "kept": g["kept_id"], "kept_by": g["kept_by"],
         # SQLite stores datetimes as Django's text format; PostgreSQL parses the ISO string.
         "ts": g["candle_time"] if sql.postgres else ops.adapt_datetimefield_value(ts)}
        for ts, g in planned
    ])
    run = run_id if sql.postgres else run_id.hex  # UUIDField: native uuid on PostgreSQL, char(32) elsewhere
    cursor.execute(sql.insert_log, [run, stamp, stamp, document])




def _resolve_anomalies(symbol: str | None, timeframe: str | None) -> int | None:
    """Resolve open duplicate anomalies of series that are clean now (None: that failed, logged)."""
    try:
        return resolve_cleaned_duplicates(symbol, timeframe)
    except Exception:  # the cleanup itself is committed; a failure here must not hide that
        logger.exception("duplicate cleanup: resolving duplicate anomalies failed")
        return None
