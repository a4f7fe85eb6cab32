"""``manage.py repair_anomalies``: re-fetch each unresolved anomaly's range from the instrument's
provider and re-check it (``integrity.repair``), one after the other, in this process.

Exit codes: 0 every repaired anomaly is resolved (or there was nothing to repair, or ``--dry-run``);
1 some stay open (the source confirmed them, the provider failed, the series was busy); 2 bad arguments.
"""

from __future__ import annotations

import json

from django.core.management.base import CommandError

from integrity.management.output import IntegrityCommand, add_format_argument, keep_stdout_for_json
from integrity.models import Timeframe
from integrity.repair import REPAIRABLE_TYPES, RepairError, repair_anomalies


class Command(IntegrityCommand):
    help = "Re-fetch the range of each unresolved gap, outlier, invalid-bar or off-calendar anomaly and re-check it."
    exit_codes = {
        0: "every repaired anomaly is resolved (or there was nothing to repair, or --dry-run)",
        1: "some stay open (the source confirmed them, the provider failed, the series was busy)",
        2: "the arguments are unusable (nothing was fetched)",
    }

    def add_arguments(self, parser):
        parser.add_argument("--symbol")
        parser.add_argument("--timeframe")
        parser.add_argument("--types", help=f"comma-separated, of {','.join(REPAIRABLE_TYPES)} (default: all)")
        parser.add_argument("--dry-run", action="store_true", help="list what would be re-fetched, fetch nothing")
        add_format_argument(parser)

    def handle(self, *args, **options):
        keep_stdout_for_json(options)
        timeframe = options.get("timeframe")
        if timeframe and timeframe not in Timeframe.values:
            raise CommandError(f"unknown timeframe {timeframe!r}", returncode=2)
        types = [t.strip() for t in options["types"].split(",") if t.strip()] if options.get("types") else None
        try:
            outcomes = repair_anomalies(symbol=options.get("symbol"), timeframe=timeframe, types=types,
                                        dry_run=options["dry_run"], by="manage.py repair_anomalies")
        except RepairError as exc:
            raise CommandError(str(exc), returncode=2) from None
        if options["format"] == "json":
            self.stdout.write(json.dumps([o.as_dict() for o in outcomes], indent=2, default=str))
        else:
            verb = "would re-fetch" if options["dry_run"] else "repaired"
            resolved = sum(o.resolved for o in outcomes)
            self.stdout.write(f"{verb} {len(outcomes)} anomal{'y' if len(outcomes) == 1 else 'ies'}"
                              + ("" if options["dry_run"] else f": {resolved} resolved, {len(outcomes) - resolved} "
                                                                "still open"))
            for o in outcomes:
                self.stdout.write(f"  #{o.anomaly_id} {o.symbol} {o.timeframe} {o.anomaly_type} "
                                  f"[{o.range_start} → {o.range_end}): {o.outcome} — {o.note}")
        still_open = [o for o in outcomes if not o.resolved and o.outcome != "planned"]
        if still_open:
            raise CommandError(f"{len(still_open)} anomal{'y' if len(still_open) == 1 else 'ies'} still open",
                               returncode=1)
