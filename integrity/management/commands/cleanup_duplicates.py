"""``manage.py cleanup_duplicates``: keep the newest valid row of every duplicate candle group, log the rest.

    manage.py cleanup_duplicates [--symbol S] [--timeframe T] [--dry-run] [--batch-size N]
                                 [--format text|json]

Exit codes: 0 the cleanup (or dry run) finished; 1 it stopped on a failed batch (that batch was rolled
back, earlier batches stay committed: re-run to finish); 2 the arguments are unusable (nothing ran).
"""

from __future__ import annotations

import json

from django.core.management.base import CommandError

from integrity.cleanup import (
    DEFAULT_BATCH_SIZE,
    CleanupError,
    CleanupResult,
    cleanup_duplicate_records,
)
from integrity.management.output import (
    IntegrityCommand,
    add_format_argument,
    keep_stdout_for_json,
    progress_bar,
    progress_stream,
)
from integrity.models import DuplicateKeptBy, Timeframe

SHOWN_GROUPS = 10


def _rule(kept_by: str) -> str:
    """A kept_by value as the summary says it: "newest valid" / "newest (none valid)"."""
    return {DuplicateKeptBy.NEWEST_VALID: "newest valid",
            DuplicateKeptBy.NEWEST_NONE_VALID: "newest (none valid)"}.get(kept_by, kept_by)


class Command(IntegrityCommand):
    help = ("Delete duplicate candles (same symbol, timeframe, ts), keeping the latest ingested row of each "
            "group that passes the OHLC rules (the latest overall when none does); every cleaned group is "
            "logged in duplicate_records_log with the rule that chose the kept row.")
    exit_codes = {
        0: "the cleanup (or dry run) finished",
        1: "it stopped on a failed batch: that batch was rolled back, earlier ones stay committed (re-run to "
           "finish)",
        2: "the arguments are unusable (nothing ran)",
    }

    def add_arguments(self, parser):
        parser.add_argument("--symbol", help="only this symbol")
        parser.add_argument("--timeframe", help=f"only this timeframe ({', '.join(Timeframe.values)})")
        parser.add_argument("--dry-run", action="store_true", help="report what would be deleted; write nothing")
        parser.add_argument("--batch-size", default=str(DEFAULT_BATCH_SIZE),
                            help=f"duplicate groups per transaction (default {DEFAULT_BATCH_SIZE})")
        add_format_argument(parser)

    # --- small methods that tests call directly ------------------------------------------------
    def parse_options(self, options) -> dict:
        """Keyword arguments for ``cleanup_duplicate_records``, or CommandError(returncode=2)."""
        timeframe = options.get("timeframe") or None
        if timeframe and timeframe not in Timeframe.values:
            raise CommandError(f"unknown timeframe {timeframe!r}; use one of {', '.join(Timeframe.values)}",
                               returncode=2)
        raw = options.get("batch_size")
        try:
            batch_size = int(raw) if raw is not None else DEFAULT_BATCH_SIZE
        except (TypeError, ValueError):
            raise CommandError(f"--batch-size {raw!r} is not a whole number", returncode=2) from None
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1", returncode=2)
        symbol = (options.get("symbol") or "").strip() or None
        return {"symbol": symbol, "timeframe": timeframe, "dry_run": bool(options.get("dry_run")),
                "batch_size": batch_size}

    def handle(self, *args, **options):
        keep_stdout_for_json(options)
        kwargs = self.parse_options(options)
        text = options["format"] == "text"
        bar = progress_bar(progress_stream(self, options), total=None, desc="duplicate groups", unit="group")

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            result = cleanup_duplicate_records(progress=progress, **kwargs)
        except CleanupError as exc:
            bar.close()
            partial = exc.result
            if text:
                if partial is not None:
                    self.stdout.write(self.summary(partial))
                self.stderr.write(f"cleanup stopped: {exc}")
            else:
                payload = partial.as_dict() if partial is not None else {}
                payload["error"] = str(exc)
                self.stdout.write(json.dumps(payload, indent=2))
            raise CommandError("cleanup stopped on a failed batch", returncode=1) from None
        bar.close()
        if text:
            self.stdout.write(self.summary(result))
        else:
            self.stdout.write(json.dumps(result.as_dict(), indent=2))

    @staticmethod
    def summary(result: CleanupResult) -> str:
        verb = "would delete" if result.dry_run else "deleted"
        scope = " ".join(filter(None, [result.symbol, result.timeframe])) or "all series"
        lines = [
            f"duplicate cleanup{' (dry run)' if result.dry_run else ''} of {scope}, run {result.run_id}",
            f"{result.groups_total} duplicate groups, {verb} {result.rows_deleted} rows "
            f"in {result.batches} batch(es)",
        ]
        if result.kept_by:
            lines.append("kept: " + ", ".join(
                f"{n} {_rule(rule)}" for rule, n in sorted(result.kept_by.items())))
        if result.series:
            lines.append("")
            rows = [("symbol", "tf", "groups", "rows")] + [
                (s, tf, str(c["groups"]), str(c["rows_deleted"])) for (s, tf), c in sorted(result.series.items())
            ]
            widths = [max(len(row[i]) for row in rows) for i in range(4)]
            for row in rows:
                lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if result.groups:
            lines.append("")
            lines.append(f"first {min(SHOWN_GROUPS, len(result.groups))} of {result.groups_total} groups:")
            for g in result.groups[:SHOWN_GROUPS]:
                lines.append(f"  {g['symbol']} {g['timeframe']} {g['candle_time']}: kept {g['kept_id']} "
                             f"({_rule(g['kept_by'])}), {verb} {g['deleted_ids']} ({g['duplicate_count']} rows)")
        if result.dry_run and result.groups_total:
            lines.append("")
            lines.append("dry run: nothing was written; run without --dry-run to clean up")
        return "\n".join(lines)
