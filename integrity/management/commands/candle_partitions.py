"""``manage.py candle_partitions``: maintain the partitioned candle store on PostgreSQL
(``integrity.partitions``); scheduled daily by ``setup_schedules`` (``SCHEDULE_PARTITIONS_CRON``).

    manage.py candle_partitions [--ahead N] [--no-retention] [--format text|json]
    manage.py candle_partitions --convert [--format text|json]

Creates every timeframe's partitions up to N months ahead (``CANDLE_PARTITIONS_AHEAD``), moves bars
sitting in a default partition into partitions of their own, drops the partitions older than each
timeframe's retention (``CANDLE_RETENTION_1M`` …; off by default) and lists every partition with its
size. ``--convert`` turns an unpartitioned ``candles`` into partitions in place (resumable: run it
again after an interruption); migration 0009 does the same, this shows progress.

Exit codes: 0 done (on SQLite: nothing to do, said so); 1 it failed (e.g. candles not converted yet);
2 the arguments are unusable.
"""

from __future__ import annotations

import json
import sys

from django.core.management.base import CommandError

from integrity import partitions
from integrity.management.output import IntegrityCommand, add_format_argument, keep_stdout_for_json

SQLITE_MESSAGE = "candle partitioning is PostgreSQL-only; on SQLite candles is one plain table: nothing to do"


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


class Command(IntegrityCommand):
    help = ("PostgreSQL candle partitions: create ahead, move default-partition rows into partitions, apply "
            "retention, report sizes; --convert turns an unpartitioned candles table into partitions in place.")
    exit_codes = {
        0: "done (on SQLite: nothing to do, and it says so)",
        1: "it failed (e.g. candles is not converted yet: run --convert)",
        2: "the arguments are unusable (e.g. --ahead out of 0..120)",
    }

    def add_arguments(self, parser):
        parser.add_argument("--ahead", help="months of partitions to keep ahead (default: CANDLE_PARTITIONS_AHEAD)")
        parser.add_argument("--no-retention", action="store_true", help="drop nothing this time")
        parser.add_argument("--convert", action="store_true",
                            help="convert an unpartitioned candles table in place (resumable)")
        add_format_argument(parser)

    def parse_ahead(self, raw) -> int | None:
        if raw is None:
            return None
        try:
            ahead = int(raw)
        except (TypeError, ValueError):
            raise CommandError(f"--ahead {raw!r} is not a whole number of months", returncode=2) from None
        if not 0 <= ahead <= 120:
            raise CommandError("--ahead must be between 0 and 120 months", returncode=2)
        return ahead

    def handle(self, *args, **options):
        keep_stdout_for_json(options)
        ahead = self.parse_ahead(options.get("ahead"))
        as_json = options["format"] == "json"
        if not partitions.is_postgres():
            self.stdout.write(json.dumps({"skipped": SQLITE_MESSAGE}) if as_json else SQLITE_MESSAGE)
            return
        try:
            if options["convert"]:
                result = partitions.convert_candles(progress=None if as_json else self.progress, ahead=ahead)
                self.stdout.write(json.dumps(result, indent=2) if as_json else self.converted_text(result))
                return
            report = partitions.maintain_partitions(ahead=ahead, retention={} if options["no_retention"] else None)
        except partitions.PartitioningUnavailable as exc:
            raise CommandError(str(exc), returncode=1) from None
        self.stdout.write(json.dumps(report.as_dict(), indent=2) if as_json else self.report_text(report))

    def progress(self, moved: int, total: int) -> None:
        if sys.stderr.isatty():
            self.stderr.write(f"\r\033[Kmoved {moved}/{total} rows", ending="")

    @staticmethod
    def converted_text(result: dict) -> str:
        if not result["converted"]:
            return "candles is already partitioned: nothing to convert"
        return f"candles converted to partitions: {result['moved']} row(s) moved"

    @staticmethod
    def report_text(report: partitions.MaintenanceReport) -> str:
        lines = [f"{len(report.partitions)} partitions, {_size(report.total_bytes)} with indexes; "
                 f"{len(report.created)} created (ahead {report.ahead_months} months)"]
        for name in report.created:
            moved = report.moved_from_default.get(name)
            lines.append(f"  created {name}" + (f" ({moved} row(s) moved in from the default partition)"
                                                if moved else ""))
        for dropped in report.dropped:
            lines.append(f"  dropped {dropped['name']} ({dropped['from'][:10]} … {dropped['to'][:10]}, "
                         f"~{dropped['rows_estimate']} rows, {_size(dropped['bytes'])}; retention "
                         f"{dropped['timeframe']} {dropped['retention_days']} days)")
        lines.append("")
        width = max((len(p["name"]) for p in report.partitions), default=10)
        lines.append(f"{'partition'.ljust(width)}  {'rows (est.)':>12}  {'size':>10}")
        for p in report.partitions:
            lines.append(f"{p['name'].ljust(width)}  {p['rows_estimate']:>12}  {_size(p['bytes']):>10}")
        if report.warning:
            lines += ["", f"WARNING: {report.warning}"]
        return "\n".join(lines)
