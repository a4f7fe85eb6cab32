"""``manage.py detect_anomalies``: run the calendar-aware detectors and record anomalies.

Text output: the run's counts, the findings summarised by type and severity, then at most ``--limit``
findings, most severe first ("… and N more"). ``--format json`` lists every finding.

Exit codes: 0 no unresolved finding of high or critical severity; 1 high or critical findings;
2 bad arguments.
"""

from __future__ import annotations

import json

from django.core.management.base import CommandError

from integrity.management.output import (
    IntegrityCommand,
    add_format_argument,
    keep_stdout_for_json,
    parse_as_of,
)
from integrity.models import Severity, Timeframe
from integrity.quality.anomalies import detect_data_anomalies

DEFAULT_LIMIT = 20
SEVERITY_ORDER = (Severity.CRITICAL, Severity.HIGH, Severity.MEDIUM, Severity.LOW)  # most severe first
FINDING_FIELDS = ("symbol", "timeframe", "anomaly_type", "severity", "period_start", "period_end",
                  "affected_rows", "description")


class Command(IntegrityCommand):
    help = "Detect gaps, off-calendar bars, outliers, stale series, invalid OHLC rows and duplicates."
    exit_codes = {
        0: "no unresolved finding of high or critical severity",
        1: "high or critical findings",
        2: "the arguments are unusable (nothing was scanned)",
    }

    def add_arguments(self, parser):
        parser.add_argument("--symbol")
        parser.add_argument("--timeframe")
        parser.add_argument("--types", help="comma-separated: gap,off_calendar,outlier,stale,invalid_ohlc,duplicate")
        parser.add_argument("--dry-run", action="store_true", help="report findings, write nothing")
        parser.add_argument("--full", action="store_true", help="rescan whole series (default: incremental)")
        parser.add_argument("--as-of", help="judge as of this UTC time (ISO; default now): replays the "
                                                 "judgement of a past moment; implies --dry-run (a replay "
                                                 "records and resolves nothing)")
        add_format_argument(parser)
        parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                            help=f"text output: list at most this many findings, most severe first "
                                 f"(default {DEFAULT_LIMIT}; JSON always lists all)")

    def handle(self, *args, **options):
        keep_stdout_for_json(options)
        timeframe = options.get("timeframe")
        if timeframe and timeframe not in Timeframe.values:
            raise CommandError(f"unknown timeframe {timeframe!r}", returncode=2)
        if options["limit"] < 0:
            raise CommandError(f"--limit must be 0 or more, got {options['limit']}", returncode=2)
        types = [t.strip() for t in options["types"].split(",") if t.strip()] if options.get("types") else None
        now = parse_as_of(options.get("as_of"))
        try:
            result = detect_data_anomalies(symbol=options.get("symbol"), timeframe=timeframe, types=types,
                                           dry_run=options["dry_run"] or now is not None, full=options["full"],
                                           now=now)
        except ValueError as exc:
            raise CommandError(str(exc), returncode=2) from None
        rows = []
        for finding in result.findings:
            data = finding.as_dict()
            rows.append({**{k: data[k] for k in FINDING_FIELDS}, "fingerprint": data["fingerprint"],
                         "details": data["details"]})
        if options["format"] == "json":
            self.stdout.write(json.dumps(rows, indent=2, default=str))
        else:
            summary = result.as_dict()
            verb = "would record" if result.dry_run else "recorded"
            self.stdout.write(
                f"scanned {summary['series_scanned']} series ({'full' if result.full else 'incremental'}): "
                f"{summary['found']} finding(s) {verb}; {summary['created']} new, {summary['updated']} updated, "
                f"{summary['resolved']} auto-resolved"
                + (f", {summary['dismissed']} left out (resolved for good as false positive, expected or "
                   f"missing at source)" if summary["dismissed"] else "")
            )
            self.write_text_findings(rows, options["limit"])
        serious = sum(f.severity in ("high", "critical") for f in result.findings)
        if serious:
            raise CommandError(f"{serious} high or critical finding(s)", returncode=1)

    def write_text_findings(self, rows: list[dict], limit: int) -> None:
        """By type × severity, then at most ``limit`` findings, most severe first."""
        if not rows:
            return
        counts: dict[str, dict[str, int]] = {}
        for row in rows:
            by_severity = counts.setdefault(row["anomaly_type"], {})
            by_severity[row["severity"]] = by_severity.get(row["severity"], 0) + 1
        width = max(len(t) for t in counts)
        self.stdout.write("by type and severity:")
        for anomaly_type in sorted(counts):
            cells = ", ".join(f"{severity} {counts[anomaly_type][severity]}" for severity in SEVERITY_ORDER
                              if severity in counts[anomaly_type])
            self.stdout.write(f"  {anomaly_type:{width}}  {sum(counts[anomaly_type].values()):>6}  ({cells})")
        rank = {severity: i for i, severity in enumerate(SEVERITY_ORDER)}
        shown = sorted(rows, key=lambda row: rank.get(row["severity"], len(rank)))[:limit]
        if shown:
            self.stdout.write("findings, most severe first:")
        for row in shown:
            self.stdout.write(f"  [{row['severity']:8}] {row['symbol']} {row['timeframe']} "
                              f"{row['anomaly_type']}: {row['description']}")
        if len(rows) > len(shown):
            self.stdout.write(f"  … and {len(rows) - len(shown)} more (use --format json for all)")
