"""``manage.py closures``: record, list and remove an instrument's closures (extra closed time).

    manage.py closures add SYMBOL --start T --end T [--reason TEXT]
    manage.py closures add --preset forex-holidays --years 2024-2027 [--symbol S ...]
    manage.py closures list [--symbol S] [--format text|json]
    manage.py closures remove ID [ID ...]

Times are ISO dates or date-times (naive: UTC); a closure is [start, end). Exit codes: 0 done; 2 the
arguments are unusable or a closure breaks the rules (nothing recorded).
"""

from __future__ import annotations

import json
import re

from django.core.management.base import CommandError

from integrity.closures import PRESETS, ClosureError, add_closure, add_preset, remove_closure
from integrity.management.output import (
    IntegrityCommand,
    add_format_argument,
    keep_stdout_for_json,
    parse_when,
)
from integrity.models import InstrumentClosure
from integrity.timeframes import iso


def parse_years(value: str) -> list[int]:
    """``2024``, ``2024-2027`` or ``2024,2026``: the years, or a usage error."""
    years: list[int] = []
    for part in (value or "").split(","):
        match = re.fullmatch(r"\s*(\d{4})\s*(?:-\s*(\d{4})\s*)?", part)
        if not match:
            raise CommandError(f"--years {value!r}: use a year (2024), a range (2024-2027) or a list (2024,2026)",
                               returncode=2)
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first or last - first > 100:
            raise CommandError(f"--years {value!r}: the range must run forwards, at most 100 years", returncode=2)
        years.extend(range(first, last + 1))
    return years


def closure_row(closure: InstrumentClosure) -> dict:
    return {"id": closure.pk, "symbol": closure.symbol, "start": iso(closure.start), "end": iso(closure.end),
            "reason": closure.reason, "created_by": closure.created_by, "created_at": iso(closure.created_at)}


class Command(IntegrityCommand):
    help = ("Record, list and remove closures: extra closed time of an instrument (holidays, outages) that the "
            "gap, off-calendar and staleness checks do not expect bars in.")
    exit_codes = {
        0: "done",
        2: "the arguments are unusable or a closure breaks the rules (nothing recorded)",
    }

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        add = actions.add_parser("add", help="record a closure, or a preset's closures")
        add.add_argument("symbol", nargs="?", help="the instrument (not with --preset)")
        add.add_argument("--start", help="first closed instant (ISO; naive = UTC)")
        add.add_argument("--end", help="end of the closure, exclusive (ISO; naive = UTC)")
        add.add_argument("--reason", default="", help="why the market is closed")
        add.add_argument("--preset", choices=PRESETS, help="forex-holidays: Christmas and New Year's Day")
        add.add_argument("--years", help="the preset's years: 2024, 2024-2027 or 2024,2026")
        add.add_argument("--symbol", dest="symbols", action="append",
                         help="with --preset: only this instrument (repeatable; default: all forex instruments)")
        listing = actions.add_parser("list", help="list closures")
        listing.add_argument("--symbol", help="only this instrument")
        add_format_argument(listing)
        remove = actions.add_parser("remove", help="remove closures by id")
        remove.add_argument("ids", nargs="+", type=int, metavar="ID")

    def handle(self, *args, **options):
        keep_stdout_for_json(options)
        try:
            getattr(self, f"do_{options['action']}")(options)
        except ClosureError as exc:
            raise CommandError(str(exc), returncode=2) from None

    def do_add(self, options) -> None:
        by = "cli"
        if options.get("preset"):
            if options.get("symbol") or options.get("start") or options.get("end"):
                raise CommandError("--preset records its own closures: give no SYMBOL, --start or --end "
                                   "(use --symbol to restrict it)", returncode=2)
            if not options.get("years"):
                raise CommandError("--preset needs --years (e.g. 2024-2027)", returncode=2)
            created, existing = add_preset(options["preset"], parse_years(options["years"]),
                                           options.get("symbols"), by=by)
            self.stdout.write(f"{options['preset']}: {created} closure(s) recorded, {existing} already there")
            return
        if options.get("symbols") or options.get("years"):
            raise CommandError("--symbol and --years go with --preset; give SYMBOL --start --end", returncode=2)
        start = parse_when(options.get("start"), "--start")
        end = parse_when(options.get("end"), "--end")
        closure, created = add_closure(options.get("symbol") or "", start, end, options.get("reason") or "", by=by)
        self.stdout.write(f"{'recorded' if created else 'already recorded'}: #{closure.pk} {closure}")

    def do_list(self, options) -> None:
        closures = InstrumentClosure.objects.order_by("symbol", "start")
        if options.get("symbol"):
            closures = closures.filter(symbol=options["symbol"])
        rows = [closure_row(c) for c in closures]
        if options.get("format") == "json":
            self.stdout.write(json.dumps(rows, indent=2))
            return
        for row in rows:
            reason = f"  {row['reason']}" if row["reason"] else ""
            self.stdout.write(f"#{row['id']:<6} {row['symbol']:<12} {row['start']} → {row['end']}{reason}")
        self.stdout.write(f"{len(rows)} closure(s)")

    def do_remove(self, options) -> None:
        found = {c.pk: c for c in InstrumentClosure.objects.filter(pk__in=options["ids"])}
        missing = [str(i) for i in options["ids"] if i not in found]
        if missing:
            raise CommandError(f"no closure with id {', '.join(missing)} (see `manage.py closures list`)",
                               returncode=2)
        for closure in found.values():
            remove_closure(closure)
        self.stdout.write(f"{len(found)} closure(s) removed")
