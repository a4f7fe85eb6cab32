"""The per-series page (``/admin/integrity/series/<symbol>/<timeframe>/``): the picture to see before
reading any list — a coverage calendar (per UTC day, the share of expected bars stored; missing days
red, each day linking its candles) over a bounded range, and the price chart of the recent bars.

The range is ``?start=YYYY-MM-DD&end=YYYY-MM-DD`` (both days included; default: the last
``DEFAULT_DAYS`` days to today, UTC), at most ``MAX_DAYS`` days; anything else is a 400 page saying
why. Linked from the dashboard's series and from an anomaly's chart.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.http import urlencode

from ..charts.coverage import coverage_svg, daily_coverage
from ..charts.data import series_calendar
from ..charts.series import recent_chart_svg
from ..models import Instrument
from ..timeframes import Timeframe

DEFAULT_DAYS = 90
MAX_DAYS = 731
SHORT_DAYS = 30  # days not fully covered listed under the calendar, newest first


class BadRange(ValueError):
    """A ?start/?end that names no range the page can show."""


def series_url(symbol: str, timeframe: str) -> str | None:
    """The series page's address (None for a symbol no URL can carry: one stored before the rules)."""
    try:
        return reverse("admin:integrity-series", args=[symbol, timeframe])
    except NoReverseMatch:
        return None


def _day(params, name: str) -> date | None:
    text = params.get(name, "")
    if text == "":
        return None
    try:
        value = date.fromisoformat(text) if len(text) == 10 else None
    except ValueError:
        value = None
    if value is None:
        raise BadRange(f"{name} must be a date written YYYY-MM-DD, got {text[:40]!r}")
    if value.year < 1970:
        raise BadRange(f"{name} must be in 1970 or later, got {text}")
    return value


def parse_range(params, today: date) -> tuple[date, date]:
    """(first, last) day to show, both included, from ``?start``/``?end``; ``BadRange`` says what is wrong."""
    first, last = _day(params, "start"), _day(params, "end")
    if first is None and last is None:
        last = today
    if last is None:
        last = min(first + timedelta(days=DEFAULT_DAYS - 1), max(today, first))
    if first is None:
        first = last - timedelta(days=DEFAULT_DAYS - 1)
    if last < first:
        raise BadRange(f"end ({last}) is before start ({first})")
    if (last - first).days + 1 > MAX_DAYS:
        raise BadRange(f"at most {MAX_DAYS} days at a time, got {(last - first).days + 1} ({first} to {last})")
    return first, last


def _candles_of_day(symbol: str, timeframe: str):
    changelist = reverse("admin:integrity_candle_changelist")

    def link(day: date) -> str:
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        return changelist + "?" + urlencode({"q": symbol, "timeframe__exact": timeframe, "ts__gte": start.isoformat(),
                                             "ts__lt": (start + timedelta(days=1)).isoformat()})
    return link


def series_page(site, request, symbol: str, timeframe: str) -> TemplateResponse:
    if not request.user.has_perm("integrity.view_candle"):
        raise PermissionDenied("the series page needs the permission to view candles")
    instrument = Instrument.objects.filter(symbol=symbol).first()
    if instrument is None or timeframe not in Timeframe.values:
        raise Http404(f"no series {symbol} {timeframe}: not an instrument on the watchlist or not a timeframe")
    now = timezone.now()
    context = {**site.each_context(request), "title": f"{symbol} {timeframe}", "instrument": instrument,
               "timeframe": timeframe, "listed": timeframe in (instrument.timeframes or []),
               "links": _links(symbol, timeframe, instrument)}
    try:
        first, last = parse_range(request.GET, now.date())
    except BadRange as exc:
        context.update(error=str(exc), start=request.GET.get("start", ""), end=request.GET.get("end", ""))
        return TemplateResponse(request, "admin/integrity/series.html", context, status=400)
    calendar = series_calendar(symbol)
    context.update(start=first.isoformat(), end=last.isoformat())
    try:
        days = daily_coverage(symbol, timeframe, calendar, first, last, now)
        chart = recent_chart_svg(symbol, timeframe, calendar, now)
    except ValueError as exc:  # a calendar code that cannot be built for this range
        context.update(error=f"the calendar {calendar.calendar!r} cannot be used here: {exc}")
        return TemplateResponse(request, "admin/integrity/series.html", context, status=400)
    link = _candles_of_day(symbol, timeframe)
    short = [d for d in reversed(days) if d.state in ("missing", "partial", "extra")][:SHORT_DAYS]
    context.update(coverage=coverage_svg(days, link), chart=chart, summary=_summary(days),
                   short_days=[(d, link(d.day)) for d in short])
    return TemplateResponse(request, "admin/integrity/series.html", context)


def _summary(days) -> dict:
    expected = sum(d.expected for d in days if d.state not in ("before",))
    present = sum(min(d.present, d.expected) for d in days if d.state not in ("before",))
    counts = {state: sum(1 for d in days if d.state == state)
              for state in ("full", "partial", "missing", "closed", "extra", "before", "pending")}
    return {"expected": expected, "present": present, "pct": round(100 * present / expected, 2) if expected else None,
            **counts}


def _links(symbol: str, timeframe: str, instrument) -> list[tuple[str, str]]:
    query = {"q": symbol, "timeframe__exact": timeframe}
    return [
        ("instrument", reverse("admin:integrity_instrument_change", args=[instrument.pk])),
        ("candles", reverse("admin:integrity_candle_changelist") + "?" + urlencode(query)),
        ("open anomalies", reverse("admin:integrity_dataanomaly_changelist") + "?"
         + urlencode({**query, "resolution_status__exact": "open"})),
        ("rejected bars", reverse("admin:integrity_rejectedcandle_changelist") + "?" + urlencode(query)),
    ]
