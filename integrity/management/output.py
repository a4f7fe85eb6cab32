"""Helpers shared by the commands."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

from django.core.management.base import CommandError

from integrity.backfill import BackfillResult


def parse_when(value: str | None, label: str) -> datetime | None:
    """An option's ISO date or date-time (naive: UTC); a usage error (exit 2) naming ``label`` otherwise."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(f"{label} {value!r} is not an ISO date or date-time (e.g. 2024-01-31 or "
                           "2024-01-31T14:30:00Z)", returncode=2) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_as_of(value: str | None) -> datetime | None:
    """``--as-of``: a past UTC moment to judge as of (replays staleness); None: now."""
    parsed = parse_when(value, "--as-of")
    if parsed is None:
        return None
    if parsed > datetime.now(UTC):
        raise CommandError(f"--as-of {value!r} is in the future", returncode=2)
    return parsed.astimezone(UTC)


def keep_stdout_for_json(options) -> None:
    """With ``--format json`` stdout carries only the JSON document: move log output to stderr.

    Logs go to stdout by default (12-factor); a command whose stdout is parsed must not interleave
    them with its result.
    """
    if options.get("format") != "json":
        return
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is sys.stdout:
            handler.setStream(sys.stderr)


def backfill_table(results: list[BackfillResult]) -> str:
    """One row per series run (status, counts, execution id), then the failed or refused ones with why."""
    header = ("symbol", "tf", "status", "inserted", "updated", "invalid", "retry", "seconds", "execution")
    rows = [header] + [
        (r.symbol, r.timeframe, r.status, str(r.inserted), str(r.updated), str(r.invalid), str(r.retry_count),
         f"{r.duration_seconds:.2f}", (r.execution_id or r.active_execution_id or "-"))
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    failed = [r for r in results if not r.ok]
    lines.append("")
    lines.append(f"{len(results) - len(failed)} completed, {len(failed)} failed or refused")
    for r in failed:
        lines.append(f"  {r.symbol} {r.timeframe}: {r.error}")
    return "\n".join(lines)
