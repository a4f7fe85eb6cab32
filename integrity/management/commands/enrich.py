"""``manage.py enrich``: recompute per-series statistics (coverage, robust volatility).

A ``--symbol`` no instrument has, or a ``--timeframe`` that does not exist, is a usage error (exit 2)
naming it — not "enriched 0 series", which would read as success.
"""

from __future__ import annotations

import json

from django.core.management.base import CommandError

from integrity.management.output import (
    IntegrityCommand,
    add_format_argument,
    check_known_symbol,
    keep_stdout_for_json,
)
from integrity.models import Timeframe
from integrity.quality.enrichment import enrich_series


class Command(IntegrityCommand):
    help = "Recompute series_stats (first/last bar, bar count, expected bars, coverage, robust volatility)."
    exit_codes = {
        0: "the statistics were recomputed",
        2: "the arguments are unusable: an unknown symbol or timeframe (nothing was written)",
    }

    def add_arguments(self, parser):
        parser.add_argument("--symbol", help="only this instrument (default: every instrument)")
        parser.add_argument("--timeframe", help=f"only this timeframe ({', '.join(Timeframe.values)})")
        add_format_argument(parser)

    def handle(self, *args, **options):
        keep_stdout_for_json(options)
        self.check_arguments(options)
        results = enrich_series(symbol=options.get("symbol"), timeframe=options.get("timeframe"))
        if options["format"] == "json":
            self.stdout.write(json.dumps([r.as_dict() for r in results], indent=2))
            return
        self.stdout.write(f"enriched {len(results)} series")
        for r in results:
            coverage = f"{r.coverage_pct:.2f}%" if r.coverage_pct is not None else "-"
            vol = f"{r.robust_volatility:.5f}" if r.robust_volatility is not None else "-"
            self.stdout.write(f"  {r.symbol:10} {r.timeframe:3} bars {r.bar_count:>9}  coverage {coverage:>8}"
                              f"  robust vol {vol}")

    @staticmethod
    def check_arguments(options) -> None:
        timeframe = options.get("timeframe")
        if timeframe is not None and timeframe not in Timeframe.values:
            raise CommandError(f"unknown timeframe {timeframe!r}; use one of {', '.join(Timeframe.values)}",
                               returncode=2)
        if options.get("symbol") is not None:
            check_known_symbol(options["symbol"])
