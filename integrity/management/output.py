"""Helpers shared by the commands: their base class (help with output formats and exit codes),
``--format``, the terminal progress bar, argument parsing, tables."""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TextIO

from django.core.management.base import BaseCommand, CommandError, DjangoHelpFormatter
from tqdm import tqdm

from integrity.backfill import BackfillResult

FORMATS = ("text", "json")
FORMAT_EPILOG = """\
output (--format):
  text  (default) a summary for people on stdout; long work draws a progress bar (rate, ETA) on
        stderr when stderr is a terminal, and nothing there otherwise
  json  one JSON document on stdout and nothing else there (logs move to stderr)"""
USAGE_EXIT = "the arguments are unusable (usage error): nothing was done"


class HelpFormatter(DjangoHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Django's option order; the description and the epilog printed as written (their tables)."""


class IntegrityCommand(BaseCommand):
    """Base of the app's commands: ``--help`` ends with what ``--format`` gives (when the command has
    it) and what each exit code means (``exit_codes``; 2 is argparse's usage error everywhere)."""

    exit_codes: Mapping[int, str] = {0: "done"}

    def create_parser(self, prog_name, subcommand, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        if parser.description:
            parser.description = textwrap.fill(parser.description, width=100)
        parser.epilog = command_epilog(self.exit_codes, has_format=has_option(parser, "--format"))
        return parser


def command_epilog(exit_codes: Mapping[int, str], has_format: bool) -> str:
    """The end of a command's ``--help``: the ``--format`` outputs (if any), then the exit codes."""
    codes = {**exit_codes}
    codes.setdefault(2, USAGE_EXIT)
    lines = ["exit codes:"]
    for code in sorted(codes):
        text = textwrap.wrap(codes[code], width=92)
        lines.append(f"  {code}  {text[0]}")
        lines.extend(f"     {more}" for more in text[1:])
    return (FORMAT_EPILOG + "\n\n" if has_format else "") + "\n".join(lines)


def has_option(parser: argparse.ArgumentParser, option: str) -> bool:
    """Whether ``parser`` or one of its sub-commands takes ``option``."""
    for action in parser._actions:
        if option in action.option_strings:
            return True
        if isinstance(action, argparse._SubParsersAction):
            if any(has_option(sub, option) for sub in action.choices.values()):
                return True
    return False


def add_format_argument(parser) -> None:
    """``--format text|json`` (see ``FORMAT_EPILOG``)."""
    parser.add_argument("--format", choices=FORMATS, default="text",
                        help="text (default): a summary for people; json: one JSON document on stdout")


# --- progress ---------------------------------------------------------------------------------------

def progress_stream(command: BaseCommand, options) -> TextIO | None:
    """Where progress bars go: the command's own stderr when it is a terminal and the output is text;
    None (quiet) in a pipe, a log file, a cron job or with ``--format json``.

    The raw stream, not ``command.stderr``: Django styles what that wrapper writes as an error (red)
    on a terminal, and progress is not an error."""
    if options.get("format", "text") != "text":
        return None
    stream = getattr(command.stderr, "_out", command.stderr)
    isatty = getattr(stream, "isatty", None)
    return stream if isatty is not None and isatty() else None


def note(command: BaseCommand, text: str) -> None:
    """An informational line on stderr (registered an instrument, a file's date order…): plain, not in
    the error style Django gives whatever ``command.stderr`` writes on a terminal."""
    command.stderr.write(text, style_func=_plain)


def _plain(text: str) -> str:
    return text


def progress_bar(stream: TextIO | None, *, total: float | None, desc: str, unit: str, **kwargs) -> tqdm:
    """A progress bar with count, rate and ETA (tqdm) on ``stream``; with no stream, a bar that draws
    nothing (every method a no-op)."""
    return tqdm(total=total, desc=desc, unit=unit, file=stream, disable=stream is None, dynamic_ncols=True,
                **kwargs)


def check_known_symbol(symbol: str, option: str = "--symbol") -> None:
    """A symbol that no instrument has: a usage error (exit 2) naming it and the known ones."""
    from integrity.models import Instrument

    if Instrument.objects.filter(symbol=symbol).exists():
        return
    known = list(Instrument.objects.order_by("symbol").values_list("symbol", flat=True)[:21])
    shown = ", ".join(known[:20]) + (" …" if len(known) > 20 else "")
    raise CommandError(f"{option} {symbol!r}: no instrument has this symbol; known: {shown or '(none yet)'} "
                       "(all of them: the admin or GET /api/v1/instruments/)", returncode=2)


def parse_when(value: str | None, label: str) -> datetime | None:
    """An option's ISO date or date-time (naive: UTC); a usage error (exit 2) naming ``label`` otherwise."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(f"{label} {value!r} is not an ISO date or date-time (e.g. 2024-01-31 or "
                           "2024-01-31T14:30:00Z)", returncode=2) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_as_of(value: str | None) -> datetime | None:
    """``--as-of``: a past UTC moment to judge as of (replays staleness); None: now."""
    parsed = parse_when(value, "--as-of")
    if parsed is None:
        return None
    if parsed > datetime.now(UTC):
        raise CommandError(f"--as-of {value!r} is in the future", returncode=2)
    return parsed.astimezone(UTC)


def keep_stdout_for_json(options) -> None:
    """With ``--format json`` stdout carries only the JSON document: move log output to stderr.

    Logs go to stdout by default (12-factor); a command whose stdout is parsed must not interleave
    them with its result.
    """
    if options.get("format") != "json":
        return
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is sys.stdout:
            handler.setStream(sys.stderr)


def backfill_table(results: list[BackfillResult]) -> str:
    """One row per series run (status, counts, execution id), then the failed or refused ones with why."""
    header = ("symbol", "tf", "status", "inserted", "updated", "invalid", "retry", "seconds", "execution")
    rows = [header] + [
        (r.symbol, r.timeframe, r.status, str(r.inserted), str(r.updated), str(r.invalid), str(r.retry_count),
         f"{r.duration_seconds:.2f}", (r.execution_id or r.active_execution_id or "-"))
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    failed = [r for r in results if not r.ok]
    lines.append("")
    lines.append(f"{len(results) - len(failed)} completed, {len(failed)} failed or refused")
    for r in failed:
        lines.append(f"  {r.symbol} {r.timeframe}: {r.error}")
    return "\n".join(lines)
