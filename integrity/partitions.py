"""The partitioned candle store on PostgreSQL: layout, partition maintenance, retention, and the
in-place conversion of an unpartitioned ``candles``. SQLite keeps one plain table (nothing here runs).

Layout (plain DDL, no extension — docs/operations.md says why)::

    candles                      PARTITION BY LIST (timeframe)
      candles_1m                 PARTITION BY RANGE (ts)
        candles_1m_p202601       one month   [2026-01-01, 2026-02-01)
        ...
        candles_1m_default       DEFAULT: a 1m bar outside every month partition
      ... candles_5m, candles_15m (monthly), candles_1h, candles_4h, candles_1d (yearly: p2026)
      candles_default            DEFAULT: a timeframe we do not know (a foreign writer's)

Two levels because retention is per timeframe (``CANDLE_RETENTION_1M`` …) and drops whole
partitions: a month of 1m bars can go while the daily bars of that month stay. Every partition has
the (symbol, timeframe, ts) index; there is still no unique constraint (foreign writers may
duplicate; cleanup exists for that). The primary key must hold the partition keys, so it is
(id, timeframe, ts) on PostgreSQL; ``id`` is still filled from one identity sequence, so ids stay
unique and increasing (the incremental scan's watermarks rely on it) and Django keeps ``id`` as the
model's primary key.

A bar never needs a partition to be stored: one outside every partition lands in a default
partition. Our writer creates the partitions a batch needs (``ensure_partitions``) inside the
batch's transaction; ``maintain_partitions`` (``manage.py candle_partitions``, daily) creates
them ahead of time, moves rows out of the default partitions into the partitions they belong to,
applies retention and reports sizes. The health job warns while a default partition holds rows.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection, transaction

from .conf import TIMEFRAMES, conf
from .quality.sql import is_postgres

TABLE = "candles"
OLD_TABLE = "candles_unpartitioned"  # the table being converted, while rows move out of it
TOP_DEFAULT = "candles_default"
# Months per partition: minute bars monthly, hourly and daily bars yearly (a year of 1h bars of 5,000
# symbols is ~9M rows, a month of 1m bars ~40M: partitions of comparable size, few of them).
PARTITION_MONTHS = {"1m": 1, "5m": 1, "15m": 1, "1h": 12, "4h": 12, "1d": 12}
CONVERT_BATCH_IDS = 500_000  # ids per transaction when rows move out of the unpartitioned table
# Advisory lock key (pg_advisory_xact_lock) serialising partition creation: "candlep" in ASCII.
_LOCK_KEY = 0x63616E646C6570


class PartitioningUnavailable(RuntimeError):
    """Partitioning is a PostgreSQL mechanism; the message says so."""


def require_postgres() -> None:
    if not is_postgres():
        raise PartitioningUnavailable(
            f"candle partitioning is PostgreSQL-only; this database is {connection.vendor} "
            "(one plain candles table, nothing to do)")


# --- names and periods ---------------------------------------------------------------------------


def parent(timeframe: str) -> str:
    return f"{TABLE}_{timeframe}"


def default_of(timeframe: str) -> str:
    return f"{TABLE}_{timeframe}_default"


def _month_index(ts: datetime) -> int:
    ts = ts.astimezone(UTC)
    return ts.year * 12 + ts.month - 1


def _from_index(index: int) -> datetime:
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


@dataclass(frozen=True, order=True)
class Period:
    """One partition's range of bar times: [start, end)."""

    timeframe: str
    start: datetime
    end: datetime

    @classmethod
    def containing(cls, timeframe: str, ts: datetime) -> Period:
        months = PARTITION_MONTHS[timeframe]
        index = _month_index(ts)
        index -= index % months
        return cls(timeframe, _from_index(index), _from_index(index + months))

    @property
    def name(self) -> str:
        if PARTITION_MONTHS[self.timeframe] == 12:
            return f"{parent(self.timeframe)}_p{self.start:%Y}"
        return f"{parent(self.timeframe)}_p{self.start:%Y%m}"

    def next(self) -> Period:
        return Period.containing(self.timeframe, self.end)


def periods_between(timeframe: str, first: datetime, last: datetime) -> list[Period]:
    """The partitions bar times ``first`` … ``last`` (inclusive) fall in, in order."""
    period, periods = Period.containing(timeframe, first), []
    while period.start <= last:
        periods.append(period)
        period = period.next()
    return periods


_NAME = re.compile(r"^candles_(?P<tf>[0-9a-z]+)_p(?P<year>\d{4})(?P<month>\d{2})?$")


def period_of_name(name: str) -> Period | None:
    """The period a partition of ours covers, from its name (None: not one of ours)."""
    match = _NAME.match(name)
    if not match or match["tf"] not in PARTITION_MONTHS:
        return None
    start = datetime(int(match["year"]), int(match["month"] or 1), 1, tzinfo=UTC)
    return Period.containing(match["tf"], start)


# --- catalog --------------------------------------------------------------------------------------


def _exists(cursor, name: str) -> bool:
    cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [f"public.{name}"])
    return cursor.fetchone()[0]


def layout_state() -> str:
    """``partitioned``, ``converting`` (rows still moving out of ``candles_unpartitioned``) or
    ``unpartitioned``; ``sqlite`` on SQLite."""
    if not is_postgres():
        return "sqlite"
    with connection.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass('public.candles')")
        row = cursor.fetchone()
        if _exists(cursor, OLD_TABLE):
            return "converting"
    return "partitioned" if row and row[0] == "p" else "unpartitioned"


def _leaves(cursor) -> list[tuple[str, str, str, int, int]]:
    """Every leaf partition: (name, its parent, bound, estimated rows, bytes with indexes)."""
    cursor.execute(
        "SELECT c.relname, p.relname, pg_get_expr(c.relpartbound, c.oid), greatest(c.reltuples, 0)::bigint, "
        "pg_total_relation_size(c.oid) "
        "FROM pg_partition_tree('public.candles') t JOIN pg_class c ON c.oid = t.relid "
        "JOIN pg_class p ON p.oid = t.parentrelid WHERE t.isleaf ORDER BY p.relname, c.relname")
    return cursor.fetchall()


def _default_partitions() -> list[str]:
    return [TOP_DEFAULT, *(default_of(tf) for tf in TIMEFRAMES)]


# A default partition is expected to be (nearly) empty: its rows are counted up to this many.
_COUNT_CAP = 1_000_000


def default_rows() -> dict[str, int]:
    """Rows in each default partition that holds any (counted up to ``_COUNT_CAP``); {} when all are
    empty or candles is not partitioned."""
    if layout_state() != "partitioned":
        return {}
    held = {}
    with connection.cursor() as cursor:
        for name in _default_partitions():
            if not _exists(cursor, name):
                continue
            cursor.execute(f'SELECT count(*) FROM (SELECT 1 FROM "{name}" LIMIT {_COUNT_CAP}) AS r')
            count = cursor.fetchone()[0]
            if count:
                held[name] = count
    return held


# --- creating partitions --------------------------------------------------------------------------


def _columns(cursor, table: str) -> str:
    cursor.execute("SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute "
                   "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped", [f"public.{table}"])
    return cursor.fetchone()[0]


def create_partition(cursor, period: Period) -> int:
    """Create ``period``'s partition unless it exists; rows of its range already sitting in the
    timeframe's default partition move into it (PostgreSQL refuses to create a partition whose rows
    are in the default). Returns the rows moved (0 when it existed). Runs in the caller's transaction."""
    cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
    if _exists(cursor, period.name):
        return 0
    default, moved = default_of(period.timeframe), 0
    bounds = [period.start, period.end]
    if _exists(cursor, default):
        cursor.execute(f'SELECT EXISTS (SELECT 1 FROM "{default}" WHERE ts >= %s AND ts < %s)', bounds)
        if cursor.fetchone()[0]:
            cursor.execute("DROP TABLE IF EXISTS pg_temp.candles_partition_move")
            cursor.execute(f'CREATE TEMPORARY TABLE candles_partition_move ON COMMIT DROP AS '
                           f'WITH d AS (DELETE FROM "{default}" WHERE ts >= %s AND ts < %s RETURNING *) '
                           f'SELECT * FROM d', bounds)
            moved = cursor.rowcount
    # DDL takes no parameters: the bounds are literals we format ourselves (datetimes, never input).
    cursor.execute(f'CREATE TABLE "{period.name}" PARTITION OF "{parent(period.timeframe)}" '
                   f"FOR VALUES FROM ('{period.start.isoformat()}') TO ('{period.end.isoformat()}')")
    if moved:
        columns = _columns(cursor, TABLE)
        cursor.execute(f"INSERT INTO {TABLE} ({columns}) SELECT {columns} FROM candles_partition_move")
        cursor.execute("DROP TABLE pg_temp.candles_partition_move")
    return moved


def ensure_partitions(timeframe: str, first: datetime, last: datetime) -> list[str]:
    """Called by the writer in a batch's transaction: create the partitions bars ``first`` … ``last``
    of ``timeframe`` need, so our own writes never land in a default partition. A no-op (one catalog
    query) when they exist, on an unpartitioned table, or for a timeframe without its own partitions.
    If creating one fails (a foreign layout, e.g. pg_partman's names), the bars go to the default
    partition as any foreign writer's would: never lost, and the health job warns."""
    if timeframe not in PARTITION_MONTHS or not is_postgres():
        return []
    names = [p.name for p in periods_between(timeframe, first, last)]
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL, "
                       "ARRAY(SELECT n FROM unnest(%s::text[]) AS n WHERE to_regclass('public.' || n) IS NULL)",
                       [f"public.{parent(timeframe)}", names])
        is_partitioned, missing = cursor.fetchone()
        if not is_partitioned or not missing:
            return []
        created = []
        for period in periods_between(timeframe, first, last):
            if period.name in missing:
                try:
                    with transaction.atomic():
                        create_partition(cursor, period)
                    created.append(period.name)
                except Exception:  # noqa: BLE001 — the bars still land in the default partition
                    pass
    return created


def create_layout(cursor, like: str | None = None) -> None:
    """The partitioned parent, one sub-parent per timeframe and the default partitions, empty. With
    ``like`` the columns (and identity, defaults) are copied from that table (the conversion)."""
    if like:
        columns = f'LIKE "{like}" INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING GENERATED'
    else:
        columns = ("id bigint GENERATED BY DEFAULT AS IDENTITY, symbol varchar(50) NOT NULL, "
                   "timeframe varchar(20) NOT NULL, ts timestamptz NOT NULL, open double precision NOT NULL, "
                   "high double precision NOT NULL, low double precision NOT NULL, close double precision NOT NULL, "
                   "volume double precision NOT NULL, source varchar(50) NOT NULL, "
                   "ingested_at timestamptz NOT NULL, updated_at timestamptz NOT NULL")
    cursor.execute(f"CREATE TABLE {TABLE} ({columns}, CONSTRAINT candles_pkey PRIMARY KEY (id, timeframe, ts)) "
                   "PARTITION BY LIST (timeframe)")
    # The index every series scan uses, declared once: PostgreSQL creates it on every partition.
    cursor.execute(f"CREATE INDEX candles_symbol_tf_ts_idx ON {TABLE} (symbol, timeframe, ts)")
    for timeframe in TIMEFRAMES:
        cursor.execute(f'CREATE TABLE "{parent(timeframe)}" PARTITION OF {TABLE} FOR VALUES IN (\'{timeframe}\') '
                       "PARTITION BY RANGE (ts)")
        cursor.execute(f'CREATE TABLE "{default_of(timeframe)}" PARTITION OF "{parent(timeframe)}" DEFAULT')
    cursor.execute(f"CREATE TABLE {TOP_DEFAULT} PARTITION OF {TABLE} DEFAULT")


# --- maintenance (the daily command) --------------------------------------------------------------


@dataclass
class MaintenanceReport:
    created: list[str] = field(default_factory=list)
    moved_from_default: dict[str, int] = field(default_factory=dict)  # partition -> rows moved into it
    dropped: list[dict[str, Any]] = field(default_factory=list)  # retention: {name, timeframe, from, to, ...}
    partitions: list[dict[str, Any]] = field(default_factory=list)
    default_rows: dict[str, int] = field(default_factory=dict)
    ahead_months: int = 0

    @property
    def total_bytes(self) -> int:
        return sum(p["bytes"] for p in self.partitions)

    @property
    def warning(self) -> str | None:
        if not self.default_rows:
            return None
        return default_rows_warning(self.default_rows)

    def as_dict(self) -> dict[str, Any]:
        return {"ahead_months": self.ahead_months, "created": self.created,
                "moved_from_default": self.moved_from_default, "dropped": self.dropped,
                "default_rows": self.default_rows, "warning": self.warning,
                "total_bytes": self.total_bytes, "partitions": self.partitions}


def default_rows_warning(held: dict[str, int]) -> str:
    rows = ", ".join(f"{name}: {count}{'+' if count >= _COUNT_CAP else ''}" for name, count in held.items())
    return (f"bars outside every candle partition sit in default partitions ({rows}); "
            "`manage.py candle_partitions` moves them into partitions of their own "
            "(candles_default holds timeframes we do not partition: look at who writes them)")


def retention_days() -> dict[str, int]:
    """Days of bars kept per timeframe (0: keep everything)."""
    return {tf: days for tf, days in conf.CANDLE_RETENTION.items() if tf in PARTITION_MONTHS}


def maintain_partitions(ahead: int | None = None, now: datetime | None = None,
                        retention: dict[str, int] | None = None) -> MaintenanceReport:
    """Create every timeframe's partitions from the current one to ``ahead`` months ahead, move rows
    out of the default partitions into partitions of their own, drop the partitions entirely older
    than each timeframe's retention, and report every partition's size."""
    require_postgres()
    state = layout_state()
    if state != "partitioned":
        raise PartitioningUnavailable(
            f"candles is {state}: run `manage.py candle_partitions --convert` (or `migrate`) first")
    now = (now or datetime.now(UTC)).astimezone(UTC)
    ahead = conf.CANDLE_PARTITIONS_AHEAD if ahead is None else ahead
    retention = retention_days() if retention is None else retention
    report = MaintenanceReport(ahead_months=ahead)
    horizon = _from_index(_month_index(now) + ahead)
    with connection.cursor() as cursor:
        for timeframe in TIMEFRAMES:
            wanted = set(periods_between(timeframe, now, horizon))
            default = default_of(timeframe)
            # The periods of rows in the default partition (a short scan: it is meant to be empty).
            cursor.execute(f'SELECT DISTINCT date_trunc(\'month\', ts AT TIME ZONE \'UTC\') FROM "{default}"')
            wanted |= {Period.containing(timeframe, month.replace(tzinfo=UTC)) for (month,) in cursor.fetchall()}
            for period in sorted(wanted):
                with transaction.atomic():
                    if _exists(cursor, period.name):
                        continue
                    moved = create_partition(cursor, period)
                report.created.append(period.name)
                if moved:
                    report.moved_from_default[period.name] = moved
        report.dropped = _drop_expired(cursor, now, retention)
        report.partitions = [
            {"name": name, "parent": parent_name, "bound": bound, "rows_estimate": rows, "bytes": size}
            for name, parent_name, bound, rows, size in _leaves(cursor)
        ]
    report.default_rows = default_rows()
    return report


def _drop_expired(cursor, now: datetime, retention: dict[str, int]) -> list[dict[str, Any]]:
    dropped = []
    for timeframe, days in retention.items():
        if not days:
            continue
        cutoff = now - timedelta(days=days)
        cursor.execute("SELECT c.relname, greatest(c.reltuples, 0)::bigint, pg_total_relation_size(c.oid) "
                       "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                       "WHERE i.inhparent = %s::regclass ORDER BY c.relname", [f"public.{parent(timeframe)}"])
        for name, rows, size in cursor.fetchall():
            period = period_of_name(name)
            if period is None or period.timeframe != timeframe or period.end > cutoff:
                continue
            with transaction.atomic():
                cursor.execute(f'DROP TABLE "{name}"')
            dropped.append({"name": name, "timeframe": timeframe, "from": period.start.isoformat(),
                            "to": period.end.isoformat(), "rows_estimate": rows, "bytes": size,
                            "retention_days": days})
    return dropped


# --- converting an unpartitioned table in place ---------------------------------------------------


def convert_candles(progress: Callable[[int, int], None] | None = None,
                    batch_ids: int = CONVERT_BATCH_IDS, ahead: int | None = None) -> dict[str, Any]:
    """Turn an unpartitioned ``candles`` into the partitioned layout, in place and resumably.

    1. one transaction: rename the table to ``candles_unpartitioned`` (its index, key and identity
       sequence too), create the partitioned ``candles`` with the same columns, partitions covering
       every timeframe's stored bars and ``ahead`` months, and its id sequence continuing the old one;
    2. rows move in id ranges of ``batch_ids``, each range in its own transaction (deleted from the
       old table, inserted into the new one, ids kept): an interrupted run leaves every row in
       exactly one of the two tables, and a re-run continues with what is left;
    3. the emptied old table is dropped.

    ``progress(moved, total)`` is called after each range. Readers see the rows moved so far while
    it runs: convert with the workers stopped (docs/operations.md). Returns what it did.
    """
    require_postgres()
    state = layout_state()
    if state == "partitioned":
        return {"state": "partitioned", "converted": False, "moved": 0}
    ahead = conf.CANDLE_PARTITIONS_AHEAD if ahead is None else ahead
    with connection.cursor() as cursor:
        if state == "unpartitioned":
            with transaction.atomic():
                _start_conversion(cursor, ahead)
        cursor.execute(f"SELECT min(id), max(id), count(*) FROM {OLD_TABLE}")
        low, high, total = cursor.fetchone()
        columns, moved = _columns(cursor, OLD_TABLE), 0
        while low is not None and low <= high:
            with transaction.atomic():
                cursor.execute(f"WITH moved AS (DELETE FROM {OLD_TABLE} WHERE id >= %s AND id < %s "
                               f"RETURNING {columns}) INSERT INTO {TABLE} ({columns}) SELECT {columns} FROM moved",
                               [low, low + batch_ids])
                moved += cursor.rowcount
            low += batch_ids
            if progress:
                progress(moved, total)
        with transaction.atomic():
            cursor.execute(f"SELECT count(*) FROM {OLD_TABLE}")
            left = cursor.fetchone()[0]
            if left:  # rows written to the old table under its new name: move them on the next run
                raise RuntimeError(f"{left} row(s) appeared in {OLD_TABLE} while converting; run again")
            cursor.execute(f"DROP TABLE {OLD_TABLE}")
        cursor.execute(f"ANALYZE {TABLE}")
    return {"state": "partitioned", "converted": True, "moved": moved}


def _start_conversion(cursor, ahead: int) -> None:
    cursor.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
    # The months that hold bars (one pass; the table is locked meanwhile): partitions for those only,
    # not for the empty years between an old series and today.
    cursor.execute(f"SELECT DISTINCT timeframe, date_trunc('month', ts AT TIME ZONE 'UTC') FROM {TABLE}")
    held = cursor.fetchall()
    cursor.execute(f"ALTER TABLE {TABLE} RENAME TO {OLD_TABLE}")
    cursor.execute("SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'p'",
                   [OLD_TABLE])
    for (name,) in cursor.fetchall():
        cursor.execute(f'ALTER TABLE {OLD_TABLE} RENAME CONSTRAINT "{name}" TO {OLD_TABLE}_pkey')
    if _exists(cursor, "candles_symbol_tf_ts_idx"):
        cursor.execute(f"ALTER INDEX candles_symbol_tf_ts_idx RENAME TO {OLD_TABLE}_symbol_tf_ts_idx")
    cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [OLD_TABLE])
    old_sequence = cursor.fetchone()[0]
    if old_sequence:
        cursor.execute(f"ALTER SEQUENCE {old_sequence} RENAME TO {OLD_TABLE}_id_seq")
        old_sequence = f"{OLD_TABLE}_id_seq"
    create_layout(cursor, like=OLD_TABLE)
    # One id sequence for old and new rows: the new one continues after every id in use.
    cursor.execute(f"SELECT max(id) FROM {OLD_TABLE}")
    last = cursor.fetchone()[0] or 0
    if old_sequence:
        cursor.execute(f"SELECT last_value FROM {old_sequence}")
        last = max(last, cursor.fetchone()[0])
    if last:
        cursor.execute("SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)", [TABLE, last])
    now = datetime.now(UTC)
    horizon = _from_index(_month_index(now) + ahead)
    periods = {Period.containing(tf, month.replace(tzinfo=UTC)) for tf, month in held if tf in PARTITION_MONTHS}
    for timeframe in TIMEFRAMES:
        periods.update(periods_between(timeframe, now, horizon))
    for period in sorted(periods):
        create_partition(cursor, period)


def estimated_rows(table: str = TABLE) -> int:
    """PostgreSQL's row estimate for ``table``: the sum over its leaf partitions when partitioned."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce((SELECT sum(greatest(c.reltuples, 0)) FROM pg_partition_tree(%s::regclass) t "
            "JOIN pg_class c ON c.oid = t.relid WHERE t.isleaf), "
            "(SELECT greatest(reltuples, 0) FROM pg_class WHERE oid = %s::regclass))::bigint",
            [table, table])
        return cursor.fetchone()[0] or 0


def storage_status() -> dict[str, Any]:
    """The health job's ``storage`` entry: the candle table's layout and the rows in default
    partitions; ``problem`` (a warning) while a default partition holds rows or a conversion is
    unfinished."""
    state = layout_state()
    held = default_rows() if state == "partitioned" else {}
    problem = None
    if held:
        problem = default_rows_warning(held)
    elif state == "converting":
        problem = (f"the conversion of candles to partitions is unfinished (rows left in {OLD_TABLE}): "
                   "run `manage.py candle_partitions --convert`")
    return {"layout": state, "default_rows": held, "problem": problem}
