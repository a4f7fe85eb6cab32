"""``manage.py reconcile``: compare the stored bars with each instrument's reference source and
record what disagrees as ``source_mismatch`` anomalies (``integrity.reconcile``); or, with
``--repair ANOMALY_ID --note TEXT``, take the reference's bars for that anomaly's range (a person's
explicit decision, run as a tracked backfill).

Text output: one line per series (window, reference bars, findings by kind), then the findings.
``--format json``: the run as a JSON document.

Exit codes: 0 every series agrees with its reference (or ``--dry-run``, or a repair completed);
1 disagreements were found, or a reference could not be fetched, or a repair failed;
2 bad arguments (unknown symbol or timeframe, no reference, a bad window, a repair without a note).
"""

from __future__ import annotations

import json

from django.core.management.base import CommandError

from integrity.management.output import (
    IntegrityCommand,
    add_format_argument,
    keep_stdout_for_json,
    parse_when,
)
from integrity.models import DataAnomaly
from integrity.reconcile import ReconcileError, reconcile, repair_from_reference

FINDINGS_SHOWN = 20


class Command(IntegrityCommand):
    help = "Compare stored bars with the instruments' reference sources and record source_mismatch anomalies."
    exit_codes = {
        0: "every series agrees with its reference (or --dry-run, or a repair completed)",
        1: "disagreements were found, a reference could not be fetched, or a repair failed",
        2: "bad arguments: unknown symbol or timeframe, no reference, a bad window, a repair without a note",
    }

    def add_arguments(self, parser):
        parser.add_argument("--symbol", help="one instrument (default: every active one with a reference)")
        parser.add_argument("--timeframe", help="one timeframe (default: each of the instrument's)")
        parser.add_argument("--start", help="window start (ISO, UTC when naive; inclusive)")
        parser.add_argument("--end", help="window end (ISO; exclusive; default: after the last completed bar)")
        parser.add_argument("--since", metavar="LAST",
                            help="the last LAST before the end instead of --start: 90m, 48h, 7d, 2w "
                                 "(default: RECONCILE_WINDOW_DAYS days)")
        parser.add_argument("--dry-run", action="store_true", help="compare and report, record nothing")
        parser.add_argument("--repair", type=int, metavar="ANOMALY_ID",
                            help="take the reference's bars for this source_mismatch anomaly's range (needs --note)")
        parser.add_argument("--note", default="", help="why (required with --repair)")
        add_format_argument(parser)

    def handle(self, *args, **options):
        keep_stdout_for_json(options)
        if options.get("repair") is not None:
            return self.repair(options)
        start, end = parse_when(options.get("start"), "--start"), parse_when(options.get("end"), "--end")
        try:
            report = reconcile(options.get("symbol"), options.get("timeframe"), start=start, end=end,
                               since=options.get("since"), dry_run=options["dry_run"])
        except ReconcileError as exc:
            raise CommandError(str(exc), returncode=2) from None
        if options["format"] == "json":
            self.stdout.write(json.dumps(report.as_dict(), indent=2, default=str))
        else:
            self.write_text(report)
        if report.failed:
            raise CommandError(f"{len(report.failed)} reference(s) could not be fetched", returncode=1)
        if report.found and not report.dry_run:
            raise CommandError(f"{report.found} disagreement(s) with the reference", returncode=1)

    def write_text(self, report) -> None:
        verb = "would record" if report.dry_run else "recorded"
        self.stdout.write(f"reconciled {len(report.series)} series: {report.found} finding(s) "
                          f"({verb}); skipped without a reference: {len(report.skipped)}")
        shown = 0
        for s in report.series:
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(s.by_kind().items())) or "agrees"
            line = (f"  {s.symbol} {s.timeframe} vs {s.reference_provider} [{s.start} → {s.end}): "
                    f"{s.reference_bars} reference bars; {kinds}")
            if s.status != "ok":
                line = f"  {s.symbol} {s.timeframe} vs {s.reference_provider}: FAILED — {s.error}"
            self.stdout.write(line)
            for finding in s.findings:
                if shown < FINDINGS_SHOWN:
                    self.stdout.write(f"    [{finding.severity}] {finding.description}")
                shown += 1
        if shown > FINDINGS_SHOWN:
            self.stdout.write(f"    … and {shown - FINDINGS_SHOWN} more (--format json lists them all)")

    def repair(self, options) -> None:
        anomaly = DataAnomaly.objects.filter(pk=options["repair"]).first()
        if anomaly is None:
            raise CommandError(f"no anomaly {options['repair']}", returncode=2)
        try:
            outcome = repair_from_reference(anomaly, options.get("note", ""), by="manage.py reconcile")
        except ReconcileError as exc:
            raise CommandError(str(exc), returncode=2) from None
        if options["format"] == "json":
            self.stdout.write(json.dumps(outcome, indent=2, default=str))
        else:
            self.stdout.write(f"anomaly #{outcome['anomaly_id']} {outcome['symbol']} {outcome['timeframe']} "
                              f"[{outcome['range_start']} → {outcome['range_end']}) from the reference: "
                              f"{outcome['status']} ({outcome['inserted']} inserted, {outcome['updated']} updated; "
                              f"execution {outcome['execution_id']})" + (f" — {outcome['error']}" if outcome['error'] else ""))
        if not outcome["resolved"]:
            raise CommandError(f"the repair did not complete: {outcome['error'] or outcome['status']}", returncode=1)
