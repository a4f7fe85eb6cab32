"""``manage.py reap_backfills``: fail executions whose worker died, freeing their series; with
``--pending`` also cancel every pending execution no worker has started (``integrity.backfill.cancel``:
failed "cancelled: …", not a failure of the symbol).

Exit code 0 always (reaping nothing is fine); the output lists what was reaped and cancelled.
"""

from __future__ import annotations

import json

from integrity.backfill import cancel_pending_backfills, reap_dead_backfills
from integrity.management.output import IntegrityCommand, add_format_argument, keep_stdout_for_json


class Command(IntegrityCommand):
    help = "Mark in_progress backfills with a stale heartbeat (and never-started pending ones) as failed."
    exit_codes = {
        0: "always when it ran (reaping nothing is fine); the output lists what was reaped and cancelled",
    }

    def add_arguments(self, parser):
        parser.add_argument("--timeout", type=int, help="heartbeat timeout in seconds (default: setting)")
        parser.add_argument("--pending", action="store_true",
                            help="also cancel every pending execution no worker has started (not a symbol failure)")
        add_format_argument(parser)

    def handle(self, *args, **options):
        keep_stdout_for_json(options)
        reaped = reap_dead_backfills(timeout_seconds=options.get("timeout"))
        cancelled = []
        if options["pending"]:
            cancelled, _ = cancel_pending_backfills(by="reap_backfills --pending",
                                                    reason="no worker picked it up (reap_backfills --pending)")
        rows = [
            {"execution_id": str(s.execution_id), "symbol": s.symbol, "timeframe": s.timeframe,
             "error_message": s.error_message}
            for s in [*reaped, *cancelled]
        ]
        if options["format"] == "json":
            self.stdout.write(json.dumps(rows, indent=2))
            return
        self.stdout.write(f"reaped {len(reaped)} execution(s)"
                          + (f", cancelled {len(cancelled)} pending" if options["pending"] else ""))
        for row in rows:
            self.stdout.write(f"  {row['symbol']} {row['timeframe']} {row['execution_id']}: {row['error_message']}")
