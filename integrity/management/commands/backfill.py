"""``manage.py backfill``: fill candles for one or more series, each a tracked execution.

Exit codes: 0 every series completed; 1 at least one series failed or was refused (another
execution holds it), or the --file cannot be loaded (nothing was registered or claimed); 2 the
arguments are unusable: an option, the range, a missing file (nothing was registered or claimed).
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed

from django.core.management.base import CommandError
from django.db import connections

from integrity.backfill import BackfillError, BackfillResult, run_backfill
from integrity.calendars import calendar_for_asset_class, validate_calendar_code
from integrity.management.output import (
    IntegrityCommand,
    add_format_argument,
    backfill_table,
    keep_stdout_for_json,
    note,
    parse_when,
    progress_bar,
    progress_stream,
)
from integrity.models import AssetClass, Instrument, Timeframe
from integrity.providers import PROVIDER_NAMES, FetchRequest, ProviderConfigError, ProviderError, get_provider
from integrity.providers.csv import (
    TIMESTAMP_LABELS,
    CsvProvider,
    check_time_zone,
    check_timestamp_label,
    parse_date_format,
)
from integrity.ranges import RangeError, check_backfill_range
from integrity.series import InstrumentRuleError, active_instruments, check_symbol, series_of
from integrity.timeframes import EPOCH, BarAlignment, timeframe_delta


class Command(IntegrityCommand):
    help = "Backfill candles for symbols/timeframes; every run is tracked in backfill_state_persistent."
    exit_codes = {
        0: "every series completed",
        1: "a series failed or was refused (another execution holds it), or the --file cannot be loaded "
           "(then nothing was registered or claimed)",
        2: "the arguments are unusable: an option, the range, a missing file, an unknown timeframe of an "
           "instrument (nothing was registered or claimed)",
    }

    def add_arguments(self, parser):
        target = parser.add_mutually_exclusive_group()
        target.add_argument("--symbols", "--symbol", dest="symbols",
                            help="comma-separated symbols, e.g. AAPL,MSFT")
        target.add_argument("--all", action="store_true", help="every active instrument of the watchlist")
        parser.add_argument("--timeframe", help="1m, 5m, 15m, 1h, 4h or 1d (default: the instrument's own); "
                                                "one the instrument does not list is refused without --add-timeframe")
        parser.add_argument("--add-timeframe", action="store_true", dest="add_timeframe",
                            help="with --timeframe: add it to the instrument's timeframes when they do not list it "
                                 "(removed again if its load stores nothing)")
        parser.add_argument("--provider", choices=PROVIDER_NAMES, help="override the instrument's provider")
        parser.add_argument("--file", help="CSV file (provider csv)")
        parser.add_argument("--tz", help="time zone of naive CSV timestamps (default UTC)")
        parser.add_argument("--date-format", dest="date_format",
                            help="how CSV dates are written: day-first, month-first, dukascopy or a strftime "
                                 "layout such as '%%d/%%m/%%Y %%H:%%M' (default: ISO, or the order the file's "
                                 "own rows decide)")
        parser.add_argument("--timestamp-label", dest="timestamp_label", choices=TIMESTAMP_LABELS,
                            help="what a CSV row's timestamp marks: the bar's open (default) or its close "
                                 "(moved back to the open on ingest, recorded on the execution)")
        parser.add_argument("--bar-alignment", dest="bar_alignment", choices=BarAlignment.values,
                            help="where a new instrument's intraday bars start: clock (10:00, 11:00 …, the "
                                 "default) or session (09:30, 10:30 …, anchored at each session's open)")
        parser.add_argument("--asset-class", choices=AssetClass.values,
                            help="registers the instrument when it is not on the watchlist yet")
        parser.add_argument("--calendar", help="XNYS, …, 24/7 or 24/5 (with --asset-class for new instruments)")
        parser.add_argument("--start", help="range start (ISO, UTC when naive; inclusive)")
        parser.add_argument("--end", help="range end (ISO, UTC when naive; exclusive)")
        parser.add_argument("--concurrency", type=int, default=1, help="series run in parallel (default 1)")
        parser.add_argument("--strict", action="store_true", help="any invalid bar fails the run")
        parser.add_argument("--batch-size", type=int, help="bars per committed batch")
        add_format_argument(parser)

    # --- small methods that tests call directly ------------------------------------------------
    def plan(self, options) -> list[tuple[str, str, dict]]:
        """(symbol, timeframe, run kwargs) for every series the arguments name.

        Everything is checked before anything is registered or claimed: the arguments (exit 2), the
        range (exit 2) and a ``--file`` whole (exit 1 when its content cannot be loaded).
        """
        timeframe = options.get("timeframe")
        if timeframe and timeframe not in Timeframe.values:
            raise CommandError(f"unknown timeframe {timeframe!r}; use one of {', '.join(Timeframe.values)}",
                               returncode=2)
        if options.get("calendar"):
            try:
                validate_calendar_code(options["calendar"])
            except ValueError as exc:
                raise CommandError(str(exc), returncode=2) from None
        provider_options = self.provider_options(options)
        named = [s for s in (options.get("symbols") or "").split(",") if s.strip()]
        if options.get("file") and (options.get("all") or len(named) > 1):
            raise CommandError("--file holds the bars of one symbol: name exactly one with --symbol", returncode=2)
        if options.get("all"):
            targets = [(i.symbol, i) for i in active_instruments()]
            if not targets:
                raise CommandError("--all: the watchlist has no active instrument", returncode=2)
        elif options.get("symbols"):
            symbols = [s.strip() for s in options["symbols"].split(",") if s.strip()]
            if not symbols:
                raise CommandError("--symbols names no symbol", returncode=2)
            targets = [(symbol, Instrument.objects.filter(symbol=symbol).first()) for symbol in symbols]
        else:
            raise CommandError("name the series: --symbols A,B or --all", returncode=2)

        series = []  # (symbol, instrument or None when it is to be registered, timeframes)
        for symbol, instrument in targets:
            if instrument is None:
                self.new_asset_class(symbol, options)
            elif options.get("bar_alignment") and options["bar_alignment"] != instrument.bar_alignment:
                raise CommandError(
                    f"{symbol}: --bar-alignment {options['bar_alignment']} differs from the instrument's "
                    f"{instrument.bar_alignment!r}; --bar-alignment is for new instruments: change an existing "
                    "one in the admin or the API", returncode=2)
            timeframes = [timeframe] if timeframe else [s.timeframe for s in series_of(instrument)] if instrument else ["1d"]
            if not timeframes:
                raise CommandError(f"{symbol}: no timeframe given and the instrument lists none", returncode=2)
            series.append((symbol, instrument, timeframes))
        unlisted = self.unlisted_timeframe(series, timeframe, options)
        for symbol, instrument, timeframes in series:
            provider = options.get("provider") or (instrument.provider if instrument else "synthetic")
            for tf in timeframes:
                self.check_range(tf, options, provider)
            if provider == "csv" and instrument is None and not options.get("file"):
                raise CommandError(f"{symbol}: a new csv instrument needs --file", returncode=2)
            if options.get("file"):
                stored = dict(instrument.provider_options) if instrument else {}
                self.check_file(symbol, timeframes, {**stored, **provider_options})

        plans = []
        self.registered = []  # instruments this run registered: withdrawn again if they load nothing
        self.added_timeframes = []  # (symbol, timeframe) this run added: removed again if they load nothing
        for symbol, instrument, timeframes in series:
            if instrument is None:
                self.ensure_instrument(symbol, options, timeframe)
                self.registered.append(symbol)
            elif symbol in unlisted:
                self.add_timeframe(instrument, timeframe)
            for tf in timeframes:
                plans.append((symbol, tf, {"provider": options.get("provider"),
                                           "provider_options": provider_options}))
        return plans

    @staticmethod
    def unlisted_timeframe(series, timeframe: str | None, options) -> list[str]:
        """The instruments (symbols) whose timeframes do not list ``--timeframe``: a usage error (exit 2)
        saying so, unless ``--add-timeframe`` asks to add it. Bars of an unlisted timeframe would be a
        series no schedule keeps up to date and no health check watches."""
        if not timeframe:
            return []
        unlisted = [(symbol, [s.timeframe for s in series_of(instrument)]) for symbol, instrument, _ in series
                    if instrument is not None and timeframe not in [s.timeframe for s in series_of(instrument)]]
        if unlisted and not options.get("add_timeframe"):
            which = ", ".join(f"{symbol} ({', '.join(listed) or 'none'})" for symbol, listed in unlisted)
            raise CommandError(
                f"--timeframe {timeframe} is not in the timeframes of {which}: add it with --add-timeframe "
                "(or in the admin, or PATCH /api/v1/instruments/SYMBOL/), or leave --timeframe out to "
                "backfill the listed ones", returncode=2)
        return [symbol for symbol, _ in unlisted]

    def add_timeframe(self, instrument: Instrument, timeframe: str) -> None:
        """``--add-timeframe``: append ``timeframe`` to the instrument's list (said on stderr)."""
        listed = [s.timeframe for s in series_of(instrument)]
        instrument.timeframes = [*listed, timeframe]
        instrument.save(update_fields=["timeframes", "updated_at"])
        self.added_timeframes.append((instrument.symbol, timeframe))
        note(self, f"{instrument.symbol}: added timeframe {timeframe} to the instrument's timeframes "
                   f"(now {', '.join(instrument.timeframes)})")

    @staticmethod
    def provider_options(options) -> dict:
        """The CSV options given on the command line, each checked (exit 2 when unusable)."""
        provider_options = {}
        if options.get("file"):
            # --file names a CSV file: it implies --provider csv and must exist before anything is
            # registered or claimed.
            if options.get("provider") not in (None, "csv"):
                raise CommandError(f"--file is for the csv provider, not {options['provider']!r}", returncode=2)
            options["provider"] = "csv"
            if not os.path.isfile(options["file"]):
                raise CommandError(f"--file {options['file']!r}: no such file", returncode=2)
            provider_options["file"] = os.path.abspath(options["file"])
        try:
            if options.get("tz"):
                provider_options["tz"] = check_time_zone(options["tz"])
            if options.get("date_format"):
                parse_date_format(options["date_format"])
                provider_options["date_format"] = options["date_format"]
            if options.get("timestamp_label"):
                provider_options["timestamp_label"] = check_timestamp_label(options["timestamp_label"])
        except ProviderConfigError as exc:
            flag = "--tz" if "time zone" in str(exc) else "--date-format"
            raise CommandError(f"{flag}: {exc}", returncode=2) from None
        return provider_options

    @staticmethod
    def check_range(timeframe: str, options, provider: str | None) -> None:
        try:
            check_backfill_range(timeframe, parse_when(options.get("start"), "--start"),
                                 parse_when(options.get("end"), "--end"), provider=provider)
        except RangeError as exc:
            raise CommandError(f"--start/--end: {exc}", returncode=2) from None

    def check_file(self, symbol: str, timeframes: list[str], provider_options: dict) -> None:
        """Read the whole file as the run will (header, every timestamp, the date order) before
        anything is registered: a file that cannot be loaded is exit 1 and leaves no trace."""
        provider = CsvProvider()
        notes = []
        for tf in dict.fromkeys(timeframes):
            request = FetchRequest(symbol=symbol, timeframe=tf, start=EPOCH, end=EPOCH, options=provider_options)
            try:
                inspection = provider.inspect(request)
            except ProviderConfigError as exc:
                raise CommandError(f"{symbol}: {exc}", returncode=2) from None
            except ProviderError as exc:
                raise CommandError(f"{symbol}: the file cannot be loaded (nothing was registered or claimed): {exc}",
                                   returncode=1) from None
            if inspection.note and inspection.note not in notes:
                notes.append(inspection.note)
        for line in notes:
            note(self, f"{symbol}: {line}")

    @staticmethod
    def new_asset_class(symbol: str, options) -> str:
        """The asset class a symbol not on the watchlist is registered with (exit 2 if unknown or if the
        symbol breaks the instrument rules the API and the admin apply)."""
        try:
            check_symbol(symbol)
        except InstrumentRuleError as exc:
            raise CommandError(f"cannot register instrument {symbol!r}: {exc}", returncode=2) from None
        asset_class = options.get("asset_class")
        if not asset_class and options.get("provider"):
            # binance serves crypto only, alpaca US equities only: the provider says what a new symbol is.
            asset_class = getattr(get_provider(options["provider"]), "asset_class", None)
        if not asset_class:
            raise CommandError(f"unknown instrument {symbol!r}: pass --asset-class (and --calendar) to register it",
                               returncode=2)
        return asset_class

    def withdraw_empty_registrations(self, results: list[BackfillResult]) -> None:
        """An instrument this run registered whose every series failed without storing a bar is removed
        again (and so is a timeframe ``--add-timeframe`` added): left on the watchlist, the nightly
        schedule would fail on it every day until a false failure alert fired. The failed executions
        stay, with their reasons."""
        for symbol in getattr(self, "registered", []):
            own = [r for r in results if r.symbol == symbol]
            if own and all(not r.ok and not r.inserted and not r.updated for r in own):
                Instrument.objects.filter(symbol=symbol).delete()
                note(self, f"{symbol}: not registered after all — its load stored nothing")
        for symbol, timeframe in getattr(self, "added_timeframes", []):
            own = [r for r in results if (r.symbol, r.timeframe) == (symbol, timeframe)]
            if own and all(not r.ok and not r.inserted and not r.updated for r in own):
                instrument = Instrument.objects.get(symbol=symbol)
                instrument.timeframes = [tf for tf in instrument.timeframes if tf != timeframe]
                instrument.save(update_fields=["timeframes", "updated_at"])
                note(self, f"{symbol}: timeframe {timeframe} not added after all — its load stored nothing")

    def ensure_instrument(self, symbol: str, options, timeframe: str | None) -> Instrument:
        instrument = Instrument.objects.filter(symbol=symbol).first()
        if instrument is not None:
            return instrument
        asset_class = self.new_asset_class(symbol, options)
        stored = (("file", options.get("file") and os.path.abspath(options["file"])), ("tz", options.get("tz")),
                  ("date_format", options.get("date_format")), ("timestamp_label", options.get("timestamp_label")))
        instrument = Instrument.objects.create(
            symbol=symbol,
            asset_class=asset_class,
            calendar=options.get("calendar") or calendar_for_asset_class(asset_class),
            timeframes=[timeframe] if timeframe else ["1d"],
            provider=options.get("provider") or "synthetic",
            provider_options={k: v for k, v in stored if v},
            bar_alignment=options.get("bar_alignment") or BarAlignment.CLOCK,
        )
        note(self, f"registered instrument {symbol} ({asset_class}, calendar {instrument.calendar})")
        return instrument

    def run_one(self, symbol: str, timeframe: str, kwargs: dict, options, progress=None) -> BackfillResult:
        try:
            return run_backfill(
                symbol, timeframe,
                start=parse_when(options.get("start"), "--start"),
                end=parse_when(options.get("end"), "--end"),
                strict=options.get("strict", False),
                batch_size=options.get("batch_size"),
                requested_by="manage.py backfill",
                progress=progress,
                **kwargs,
            )
        except BackfillError as exc:
            return BackfillResult(symbol=symbol, timeframe=timeframe, status="failed", error=str(exc))
        finally:
            if threading.current_thread() is not threading.main_thread():
                connections.close_all()

    def handle(self, *args, **options):
        keep_stdout_for_json(options)
        if options["concurrency"] < 1:
            raise CommandError("--concurrency must be at least 1", returncode=2)
        if options.get("batch_size") is not None and options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1", returncode=2)
        # Dates are checked before anything is registered or claimed.
        parse_when(options.get("start"), "--start")
        parse_when(options.get("end"), "--end")
        plans = self.plan(options)
        stream = progress_stream(self, options)  # None: quiet (not a terminal, or --format json)
        results: list[BackfillResult] = []
        bars: dict[tuple[str, str], object] = {}
        lock = threading.Lock()
        number = {(s, tf): i for i, (s, tf, _) in enumerate(plans, start=1)}

        def bar_for(symbol: str, timeframe: str, total: int | None):
            key = (symbol, timeframe)
            if key not in bars:
                bars[key] = progress_bar(stream, total=total, unit="bar",
                                         desc=f"[{number[key]}/{len(plans)}] {symbol} {timeframe}")
            return bars[key]

        def done(result: BackfillResult):
            with lock:
                results.append(result)
                bar = bar_for(result.symbol, result.timeframe, None)
                if result.ok and bar.total:
                    bar.update(bar.total - bar.n)  # a range ending in closed time is still done
                line = (f"{result.status}: +{result.inserted} inserted, {result.updated} updated, "
                        f"{result.invalid} invalid")
                bar.set_postfix_str(line + (f" — {result.error}" if result.error else ""), refresh=False)
                bar.close()

        def progress_for(symbol: str, timeframe: str):
            if stream is None:
                return None

            def progress(state, totals):
                with lock:
                    done_bars, total_bars = self.range_position(timeframe, state)
                    bar = bar_for(symbol, timeframe, total_bars)
                    bar.set_postfix_str(f"{totals.inserted:,} inserted, {totals.updated:,} updated", refresh=False)
                    bar.update(done_bars - bar.n)
            return progress

        if options["concurrency"] == 1 or len(plans) == 1:
            for symbol, tf, kwargs in plans:
                done(self.run_one(symbol, tf, kwargs, options, progress_for(symbol, tf)))
        else:
            with ThreadPoolExecutor(max_workers=options["concurrency"]) as pool:
                futures = [pool.submit(self.run_one, s, tf, kw, options, progress_for(s, tf)) for s, tf, kw in plans]
                for future in as_completed(futures):
                    done(future.result())

        order = {(s, tf): i for i, (s, tf, _) in enumerate(plans)}
        results.sort(key=lambda r: order[(r.symbol, r.timeframe)])
        self.withdraw_empty_registrations(results)
        if options["format"] == "text":
            self.stdout.write(backfill_table(results))
        else:
            self.stdout.write(json.dumps([r.as_dict() for r in results], indent=2))
        failed = sum(not r.ok for r in results)
        if failed:
            raise CommandError(f"{failed} of {len(results)} series failed or were refused", returncode=1)

    @staticmethod
    def range_position(timeframe: str, state) -> tuple[int, int | None]:
        """(bars of the range up to the last committed bar, bars of the whole range) in steps of the
        timeframe (calendar time: closed hours count), for the progress bar's count, rate and ETA."""
        start, end, checkpoint = state.range_start, state.range_end, state.checkpoint_ts
        if not (start and end and end > start):
            return 0, None
        step = timeframe_delta(timeframe)
        total = max(1, -(-(end - start) // step))
        if not checkpoint:
            return 0, total
        covered = (checkpoint + step - start) // step  # the checkpoint bar is written
        return min(max(covered, 0), total), total
