"""The Python post-pass over the (few) disagreeing bar pairs of a reconciliation: findings, each
``source_mismatch``, in this order, a bar taken by one kind is not reported again by the next:

1. ``time_shift`` — at least ``SHIFT_MIN_BARS`` consecutive stored bars, mostly present on both sides,
   that match the reference's bars ``k`` whole hours earlier or later (and not at their own time):
   one finding for the range, which also takes the one-sided bars within ``k`` of its ends (the bar
   a relabelled range pushes out or in). Intraday only: ``k`` is a whole number of hours (1 … ``MAX_SHIFT_HOURS``) and of bars.
2. ``ratio`` — at least ``RATIO_MIN_BARS`` consecutive bars whose stored/reference close and open
   are both within ``RATIO_TOLERANCE`` of one of ``RATIOS`` (2, 3, ½, ⅓, 100, 1/100): one finding
   for the range, a probable unadjusted split or unit error.
3. ``price`` — each remaining bar present on both sides: one finding naming the field that differs
   most, both values and the relative difference (every differing field in ``details``).
4. ``missing_stored`` / ``missing_reference`` — bars one side has and the other lacks, where the
   instrument's calendar expects a bar; consecutive ones are one finding.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..calendars import is_expected_bar
from ..models import AnomalyType, Severity
from ..quality.findings import Finding
from ..timeframes import bar_label, bar_span, iso, ns_to_datetime, timeframe_ns
from .compare import FIELDS, Pair, ReferenceLookup
from .reference import ReferenceSeries

NS_PER_HOUR = 3_600_000_000_000
MAX_SHIFT_HOURS = 14  # time zones span UTC-12 … UTC+14
SHIFT_MIN_BARS = 3
RATIOS = {2.0: "×2", 3.0: "×3", 0.5: "×½", 1 / 3: "×⅓", 100.0: "×100", 0.01: "×1/100"}
RATIO_TOLERANCE = 0.02
RATIO_MIN_BARS = 2
SAMPLE = 10  # bars a range finding lists in its details


@dataclass
class _Run:
    key: float | int
    pairs: list[Pair]


def _runs(pairs: Iterable[Pair], key_of) -> list[_Run]:
    """Maximal runs of consecutive pairs (adjacent ``n``) with the same non-None key."""
    runs: list[_Run] = []
    for pair in pairs:
        key = key_of(pair)
        if key is None:
            continue
        last = runs[-1] if runs else None
        if last is not None and last.key == key and last.pairs[-1].n == pair.n - 1:
            last.pairs.append(pair)
        else:
            runs.append(_Run(key, [pair]))
    return runs


def _agree(a: tuple[float, ...], b: tuple[float, ...] | None, tolerance: float) -> bool:
    return b is not None and all(abs(x - y) <= tolerance * abs(y) for x, y in zip(a[:4], b[:4], strict=True))


def shift_candidates(timeframe: str) -> list[int]:
    """Shifts (ns) a time-zone bug can cause in this timeframe: whole hours that are whole bars,
    smallest first, later before earlier."""
    step = timeframe_ns(timeframe)
    hours = [h * NS_PER_HOUR for h in range(1, MAX_SHIFT_HOURS + 1) if (h * NS_PER_HOUR) % step == 0]
    return [k for h in hours for k in (h, -h)]


class Classifier:
    def __init__(self, series: ReferenceSeries, lookup: ReferenceLookup):
        self.series, self.lookup = series, lookup
        self.tf = series.timeframe
        self.findings: list[Finding] = []

    def classify(self, pairs: list[Pair]) -> list[Finding]:
        pairs = self._time_shifts(pairs)
        pairs = self._ratios(pairs)
        both = [p for p in pairs if p.stored is not None and p.reference is not None]
        for pair in both:
            self._price(pair)
        self._missing([p for p in pairs if p.stored is None or p.reference is None])
        return self.findings

    # --- findings -------------------------------------------------------------------------------

    def _finding(self, kind: str, severity: str, description: str, first: int, last: int, rows: int,
                 key: str, **details) -> None:
        self.findings.append(Finding(
            symbol=self.series.symbol, timeframe=self.tf, anomaly_type=AnomalyType.SOURCE_MISMATCH,
            severity=severity, description=description, affected_rows=rows,
            period_start=ns_to_datetime(first), period_end=ns_to_datetime(last), key=f"{kind}|{key}",
            details={"kind": kind, "reference_provider": self.series.provider,
                     "tolerance_pct": self.series.tolerance_pct, **details}))

    def _time_shifts(self, pairs: list[Pair]) -> list[Pair]:
        shifts = shift_candidates(self.tf)
        if not shifts:
            return pairs
        tolerance = self.series.tolerance
        matches: dict[int, list[int]] = {}
        for pair in pairs:
            if pair.stored is not None:
                matches[pair.n] = [k for k in shifts if _agree(pair.stored, self.lookup.get(pair.ts - k), tolerance)]
        taken: set[int] = set()
        current: list[Pair] = []
        shift = 0

        def close() -> None:
            # Mostly bars both sides have (that differ at their own time): a run of bars the reference
            # lacks in a flat stretch would match its neighbours too, and is missing, not shifted.
            paired = sum(p.reference is not None for p in current)
            if len(current) >= SHIFT_MIN_BARS and 2 * paired >= len(current):
                self._shift_finding(current, shift, pairs, taken)

        for pair in pairs:
            options = matches.get(pair.n) or []
            if current and shift in options and current[-1].n == pair.n - 1:
                current.append(pair)
                continue
            close()
            current, shift = ([pair], options[0]) if options else ([], 0)
        close()
        return [p for p in pairs if p.n not in taken]

    def _shift_finding(self, run: list[Pair], shift: int, pairs: list[Pair], taken: set[int]) -> None:
        first, last = run[0].ts, run[-1].ts
        edges = [p for p in pairs if (p.stored is None or p.reference is None)
                 and first - abs(shift) <= p.ts <= last + abs(shift)]
        taken.update(p.n for p in run)
        taken.update(p.n for p in edges)
        hours = shift // NS_PER_HOUR
        signed = f"{hours:+d} h"
        self._finding(
            "time_shift", Severity.HIGH,
            f"{len(run)} stored bars {bar_span(first, last, self.tf)} match the reference "
            f"({self.series.provider}) bars {abs(hours)} h {'earlier' if hours > 0 else 'later'} "
            f"(shifted {signed}): probable time-zone shift", first, last, len(run) + len(edges),
            f"{iso(first)}|{hours}", shift_hours=hours, bars=len(run),
            sample=[{"ts": iso(p.ts), "matches_reference_at": iso(p.ts - shift)} for p in run[:SAMPLE]])

    def _ratios(self, pairs: list[Pair]) -> list[Pair]:
        def ratio_of(pair: Pair) -> float | None:
            if pair.stored is None or pair.reference is None:
                return None
            for ratio in RATIOS:
                if all(r and abs(s / r / ratio - 1) <= RATIO_TOLERANCE
                       for s, r in ((pair.stored[0], pair.reference[0]), (pair.stored[3], pair.reference[3]))):
                    return ratio
            return None

        taken: set[int] = set()
        for run in _runs(pairs, ratio_of):
            if len(run.pairs) < RATIO_MIN_BARS:
                continue
            taken.update(p.n for p in run.pairs)
            first, last, label = run.pairs[0].ts, run.pairs[-1].ts, RATIOS[run.key]
            what = "unit error" if run.key in (100.0, 0.01) else "unadjusted split or unit error"
            self._finding(
                "ratio", Severity.HIGH,
                f"{len(run.pairs)} stored bars {bar_span(first, last, self.tf)} are {label} the reference's "
                f"({self.series.provider}) prices: probable {what}", first, last, len(run.pairs),
                f"{iso(first)}|{run.key:g}", ratio=run.key, bars=len(run.pairs),
                sample=[{"ts": iso(p.ts), "close": p.stored[3], "reference_close": p.reference[3]}
                        for p in run.pairs[:SAMPLE]])
        return [p for p in pairs if p.n not in taken]

    def _price(self, pair: Pair) -> None:
        limits = {f: self.series.tolerance for f in FIELDS[:4]}
        if self.series.volume_tolerance is not None:
            limits["volume"] = self.series.volume_tolerance
        fields = []
        for index, name in enumerate(FIELDS):
            if name not in limits:
                continue
            stored, reference = pair.stored[index], pair.reference[index]
            diff = abs(stored - reference)
            if diff > limits[name] * abs(reference):
                rel = diff / abs(reference) if reference else None
                fields.append({"field": name, "stored": stored, "reference": reference,
                               "relative_difference": None if rel is None else round(rel, 8)})
        if not fields:  # the statement's arithmetic said otherwise at the last digit: agreement
            return
        worst = max(fields, key=lambda f: float("inf") if f["relative_difference"] is None
                    else f["relative_difference"])
        rel = worst["relative_difference"]
        shown = "n/a" if rel is None else f"{rel * 100:+.3f} %".replace("+", "")
        self._finding(
            "price", Severity.MEDIUM,
            f"{worst['field']} {worst['stored']:g} vs reference ({self.series.provider}) {worst['reference']:g} "
            f"at {bar_label(pair.ts, self.tf)}: {shown} apart (tolerance {self.series.tolerance_pct:g} %)",
            pair.ts, pair.ts, 1, iso(pair.ts), field=worst["field"], stored=worst["stored"],
            reference=worst["reference"], relative_difference=rel, fields=fields)

    def _missing(self, pairs: list[Pair]) -> None:
        if not pairs:
            return
        expected = is_expected_bar(self.series.calendar, self.tf, [p.ts for p in pairs], self.series.alignment,
                                   self.series.closures)
        on_calendar = [p for p, ok in zip(pairs, expected, strict=True) if ok]
        side = {True: "missing_stored", False: "missing_reference"}
        for run in _runs(on_calendar, lambda p: side[p.stored is None]):
            first, last, count = run.pairs[0].ts, run.pairs[-1].ts, len(run.pairs)
            bars = "1 bar" if count == 1 else f"{count} bars"
            if run.key == "missing_stored":
                text = f"{bars} the reference ({self.series.provider}) has {'is' if count == 1 else 'are'} " \
                       f"missing from the stored series {bar_span(first, last, self.tf)}"
            else:
                text = f"stored {bars} {bar_span(first, last, self.tf)} missing from the reference " \
                       f"({self.series.provider})"
            self._finding(run.key, Severity.LOW if count == 1 else Severity.MEDIUM, text, first, last, count,
                          iso(first), bars=count)


def classify(series: ReferenceSeries, pairs: list[Pair], lookup: ReferenceLookup) -> list[Finding]:
    """The findings of a series' disagreeing pairs (``compare.disagreements``), ``lookup`` the
    reference's bars by time (its fetched window, padded by ``MAX_SHIFT_HOURS``)."""
    return Classifier(series, lookup).classify(pairs)
