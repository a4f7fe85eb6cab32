"""``manage.py setup_schedules``: create or update the django-q2 schedules (idempotent).

The table lives in ``integrity.schedules``; cron expressions come from SCHEDULE_*_CRON settings.
Exit codes: 0 done; 2 a cron setting is invalid (nothing changed).
"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from integrity.management.output import keep_stdout_for_json
from integrity.schedules import ScheduleConfigError, setup_schedules


class Command(BaseCommand):
    help = "Create or update the django-q2 schedules (enrichment, backfill, health, reconcile) from settings."

    def add_arguments(self, parser):
        parser.add_argument("--format", choices=["text", "json"], default="text")

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
