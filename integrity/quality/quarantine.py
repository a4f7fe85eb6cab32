"""What the quarantine (``rejected_candles``, written at ingest by ``integrity.rejected``) explains
to the detectors: the refused bars that lie in a hole between stored bars. Read-only.

A hole whose every missing bar was refused at ingest is the run's ``invalid_ohlc`` finding, not a
gap; a hole only partly made of refused bars stays a gap that names them as its cause. Only
refusals whose ``invalid_ohlc`` finding is still unresolved explain a hole: once that finding is
resolved (the bars were re-fetched, or a person closed it), the quarantine row is history, and a
hole at that time (a foreign writer deleted the good bar since) is a gap again.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

from django.db import connection

from ..models import DataAnomaly, RejectedCandle
from .sql import SQLITE_CHUNK, chunks, is_postgres, ns_array, to_db, values_cte

TABLE = RejectedCandle._meta.db_table
# The refusal's invalid_ohlc finding (the same execution) is still unresolved.
_STILL_EXPLAINED = f"""EXISTS (SELECT 1 FROM {DataAnomaly._meta.db_table} a
                              WHERE a.execution_id = r.execution_id AND a.anomaly_type = 'invalid_ohlc'
                                AND a.resolution_status IN ('open', 'acknowledged'))"""


def quarantined_in(holes: Sequence[tuple[int, str, str, datetime, datetime]]) -> dict[int, list[tuple[int, str]]]:
    """Per hole ``(key, symbol, timeframe, first, last)``: the quarantined bars with first <= ts <= last,
    as ``(ts ns, execution id)`` in ts order (holes without any are left out). One statement per
    chunk of holes, each hole an index range on (symbol, timeframe, ts)."""
    if not holes:
        return {}
    raw: list[tuple] = []
    if is_postgres():
        sql = f"""
            SELECT h.k, r.ts, r.execution_id
              FROM unnest(%s::int[], %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[])
                   AS h(k, symbol, timeframe, lo, hi)
              JOIN {TABLE} r ON r.symbol = h.symbol AND r.timeframe = h.timeframe
                            AND r.ts >= h.lo AND r.ts <= h.hi
             WHERE {_STILL_EXPLAINED}
             ORDER BY h.k, r.ts
        """
        params = [list(column) for column in zip(*holes, strict=True)]
        raw = _fetch(sql, params)
    else:
        for part in chunks(list(holes), SQLITE_CHUNK):
            values, params = values_cte("h", ("k", "symbol", "timeframe", "lo", "hi"),
                                        [(k, s, tf, to_db(lo), to_db(hi)) for k, s, tf, lo, hi in part])
            sql = f"""
                WITH {values}
                SELECT h.k, r.ts, r.execution_id
                  FROM h JOIN {TABLE} r ON r.symbol = h.symbol AND r.timeframe = h.timeframe
                                       AND r.ts >= h.lo AND r.ts <= h.hi
                 WHERE {_STILL_EXPLAINED}
                 ORDER BY h.k, r.ts
            """
            raw.extend(_fetch(sql, params))
    result: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for (key, _, execution), ts in zip(raw, ns_array([r[1] for r in raw]), strict=True):
        result[int(key)].append((int(ts), str(uuid.UUID(str(execution)))))
    return dict(result)


def _fetch(sql: str, params: list) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()
