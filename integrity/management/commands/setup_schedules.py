"""``manage.py setup_schedules``: create or update the django-q2 schedules (idempotent).

The table lives in ``integrity.schedules``; cron expressions come from SCHEDULE_*_CRON settings.
Exit codes: 0 done; 2 a cron setting is invalid (nothing changed).
"""

from __future__ import annotations

import json

from django.core.management.base import CommandError

from integrity.management.output import IntegrityCommand, add_format_argument, keep_stdout_for_json
from integrity.schedules import ScheduleConfigError, setup_schedules


class Command(IntegrityCommand):
    help = "Create or update the django-q2 schedules (enrichment, backfill, health, recover, reconcile) from settings."
    exit_codes = {
        0: "the schedules were created or updated",
        2: "a cron setting is invalid (nothing changed)",
    }

    def add_arguments(self, parser):
        add_format_argument(parser)

    def handle(self, *args, **options):
        keep_stdout_for_json(options)
        try:
            report = setup_schedules()
        except ScheduleConfigError as exc:
            raise CommandError(str(exc), returncode=2) from None
        if options["format"] == "json":
            self.stdout.write(json.dumps(report, indent=2))
            return
        for row in report:
            if row["action"] == "deleted":
                self.stdout.write(f"{row['name']:22} deleted (no longer in the schedule table)")
                continue
            self.stdout.write(f"{row['name']:22} {row['action']:9} cron {row['cron']!r:22} "
                              f"next run {row['next_run']}  → {row['func']}")
