"""``manage.py enrich``: recompute per-series statistics (coverage, robust volatility)."""

from __future__ import annotations

import json

from integrity.management.output import IntegrityCommand, add_format_argument, keep_stdout_for_json
from integrity.quality.enrichment import enrich_series


class Command(IntegrityCommand):
    help = "Recompute series_stats (first/last bar, bar count, expected bars, coverage, robust volatility)."
    exit_codes = {
        0: "the statistics were recomputed",
        2: "the arguments are unusable: an unknown symbol or timeframe (nothing was written)",
    }

    def add_arguments(self, parser):
        parser.add_argument("--symbol")
        parser.add_argument("--timeframe")
        add_format_argument(parser)

    def handle(self, *args, **options):
        keep_stdout_for_json(options)
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
