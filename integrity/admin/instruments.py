"""The watchlist and its market data: instruments (form and "backfill now"), candles, series statistics.

The candle list is built for a very large table: every query it makes can be answered from an index,
and the unfiltered count comes from PostgreSQL's statistics.
"""

from __future__ import annotations

import importlib

from django import forms
from django.contrib import admin
from django.core.paginator import Paginator
from django.db import connection
from django.utils.functional import cached_property

from ..api.validators import validate_provider_options, validate_reference
from ..calendars import calendar_choices
from ..models import Candle, Instrument, SeriesStats
from ..partitions import estimated_rows
from ..prices import format_volume, row_price, with_price_precision
from ..providers import PROVIDER_NAMES, check_bar_alignment
from ..quality.thresholds import validate_thresholds
from ..reconcile import ReconcileError
from ..series import series_of
from ..tasks import request_reconcile
from ..timeframes import BarAlignment, Timeframe
from .base import IntegrityModelAdmin, ReadOnlyAdmin, choice_filter, queue_backfills, report_action


def provider_options_help() -> str:
    """The option names each provider accepts (its own list, the one its ``validate_options`` checks)."""
    lines = []
    for name in PROVIDER_NAMES:
        module = importlib.import_module(f"integrity.providers.{name}")
        names = getattr(module, "OPTIONS", None) or getattr(module, "OPTION_NAMES", None)
        lines.append(f"{name}: {', '.join(names)}" if names else f"{name}: any")
    return ("A JSON object of the provider's options, checked against the provider's own rules on save. "
            "Accepted — " + "; ".join(lines) + ".")


class SearchableSelect(forms.Select):
    """A select with a search box (the admin's own select2, as its autocomplete fields use it)."""

    class Media:
        css = {"all": ["admin/css/vendor/select2/select2.min.css", "admin/css/autocomplete.css"]}
        js = ["admin/js/vendor/jquery/jquery.min.js", "admin/js/vendor/select2/select2.full.min.js",
              "admin/js/jquery.init.js", "integrity/searchable_select.js"]

    def __init__(self, attrs=None, choices=()):
        super().__init__({"class": "integrity-searchable", "data-placeholder": "search a calendar", **(attrs or {})},
                         choices)


class InstrumentForm(forms.ModelForm):
    """The model's clean() checks calendar, symbol and timeframes (``integrity.series``' instrument
    rules); the form offers the calendar as a searchable choice and the timeframes as checkboxes,
    and checks provider options (the provider's own ``validate_options``), bar alignment and thresholds."""

    calendar = forms.ChoiceField(choices=calendar_choices, widget=SearchableSelect,
                                 help_text="24/7 for crypto, 24/5 for the forex week, else the exchange's "
                                           "calendar (type to search: XNYS, XLON, NYSE …)")
    timeframes = forms.MultipleChoiceField(
        choices=Timeframe.choices, required=False, widget=forms.CheckboxSelectMultiple,
        help_text="the bar sizes to keep for this instrument")
    provider = forms.ChoiceField(choices=[(name, name) for name in PROVIDER_NAMES], initial="synthetic")
    reference_provider = forms.ChoiceField(choices=[("", "— none —"), *((name, name) for name in PROVIDER_NAMES)],
                                           required=False,
                                           help_text=Instrument._meta.get_field("reference_provider").help_text)
    bar_alignment = forms.ChoiceField(choices=BarAlignment.choices, initial=BarAlignment.CLOCK, required=False,
                                      help_text=Instrument._meta.get_field("bar_alignment").help_text)

    class Meta:
        model = Instrument
        fields = ["symbol", "asset_class", "calendar", "timeframes", "bar_alignment", "provider",
                  "provider_options", "reference_provider", "reference_options", "reconcile_tolerance",
                  "quality_thresholds", "availability_delay_minutes", "price_decimals", "active"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["provider_options"].help_text = provider_options_help()

    def clean_timeframes(self):
        # Shortest first; a timeframe sent twice (a hand-made POST) stays twice for the model's rule to refuse.
        return sorted(self.cleaned_data.get("timeframes") or (), key=Timeframe.values.index)

    def clean(self):
        cleaned = super().clean()
        if "provider" in cleaned and "provider_options" in cleaned:
            try:
                validate_provider_options(cleaned["provider"], cleaned["provider_options"], cleaned.get("symbol", ""))
            except ValueError as exc:
                self.add_error("provider_options", str(exc))
        if "reference_provider" in cleaned and "reference_options" in cleaned:
            try:
                validate_reference(cleaned["reference_provider"] or "", cleaned["reference_options"] or {},
                                   cleaned.get("symbol", ""))
            except ValueError as exc:
                self.add_error("reference_options", str(exc))
        if "provider" in cleaned and "bar_alignment" in cleaned:
            try:
                check_bar_alignment(cleaned["provider"], cleaned["bar_alignment"])
            except ValueError as exc:
                self.add_error("bar_alignment", str(exc))
        return cleaned

    def clean_bar_alignment(self):
        return self.cleaned_data.get("bar_alignment") or BarAlignment.CLOCK

    def clean_quality_thresholds(self):
        value = self.cleaned_data.get("quality_thresholds") or {}
        try:
            validate_thresholds(value)
        except (TypeError, ValueError) as exc:
            raise forms.ValidationError(str(exc)) from None
        return value


@admin.register(Instrument)
class InstrumentAdmin(IntegrityModelAdmin):
    form = InstrumentForm
    list_display = ("symbol", "asset_class", "calendar", "timeframes", "bar_alignment", "provider",
                    "reference_provider", "active", "updated_at")
    list_filter = ("asset_class", "provider", "bar_alignment", "active", "calendar", "created_at")
    search_fields = ("symbol",)
    date_hierarchy = "created_at"
    actions = ["backfill_now", "reconcile_now"]

    @admin.action(description="Backfill selected instruments now (every timeframe)", permissions=["change"])
    def backfill_now(self, request, queryset):
        series, refused = [], []
        for instrument in queryset.order_by("symbol"):
            if not instrument.timeframes:
                refused.append(f"{instrument.symbol} refused: it has no timeframes to backfill")
            series.extend((s.symbol, s.timeframe, None, None) for s in series_of(instrument))
        done, busy = queue_backfills(request, series)
        report_action(self, request, done, refused + busy, "backfills queued", queued=True)


    @admin.action(description="Reconcile selected instruments with their reference source (queued)",
                  permissions=["change"])
    def reconcile_now(self, request, queryset):
        done, refused = [], []
        for instrument in queryset.order_by("symbol"):
            try:
                queued = request_reconcile(instrument.symbol, by=f"admin:{request.user.get_username()}")
            except ReconcileError as exc:
                refused.append(f"{instrument.symbol} not reconciled: {exc}")
                continue
            done.append(f"{instrument.symbol} ({len(queued['series'])} series)")
        report_action(self, request, done, refused, "reconciliations queued", queued=True)


def price_column(column: str):
    """A list column showing the price ``column`` at its instrument's precision (``integrity.prices``)."""

    @admin.display(description=column, ordering=column)
    def shown(self, obj):
        return row_price(obj, getattr(obj, column))

    shown.__name__ = f"{column}_shown"
    return shown


class EstimatedCountPaginator(Paginator):
    """The unfiltered candle list counts from PostgreSQL's statistics (``pg_class.reltuples``)
    instead of a COUNT(*) over a table of hundreds of millions of rows; filtered lists and small
    tables count exactly."""

    estimate_from = 1_000_000

    @cached_property
    def count(self):
        queryset = self.object_list
        if connection.vendor == "postgresql" and not queryset.query.where:
            estimate = estimated_rows(queryset.model._meta.db_table)  # summed over partitions
            if estimate >= self.estimate_from:
                return estimate
        return super().count


# The providers as choices: a DISTINCT over the candle table would scan all of it.
CandleSourceFilter = choice_filter("source", "source", PROVIDER_NAMES, "source")


@admin.register(Candle)
class CandleAdmin(ReadOnlyAdmin):
    """Built for a very large table: every query on this list can be answered from an index.

    Read-only: candles are written by the backfill writer, the repair and the duplicate cleanup (which
    records what it deletes), never by hand here, where no record would be kept.

    No date hierarchy (its min/max and DISTINCT years scan the whole table); the ``ts`` filter
    offers fixed ranges instead. Search is by exact symbol (served by the (symbol, timeframe, ts)
    index; a substring search would scan).
    """

    list_display = ("symbol", "timeframe", "ts", "open_shown", "high_shown", "low_shown", "close_shown",
                    "volume_shown", "source", "ingested_at")
    list_filter = ("timeframe", CandleSourceFilter, "ts")
    search_fields = ("symbol",)
    search_help_text = "exact symbol, e.g. BTC-USD"
    show_full_result_count = False  # no second COUNT(*) of the whole table on a filtered page
    show_facets = admin.ShowFacets.NEVER  # facet counts (?_facets) would count the whole table per choice
    paginator = EstimatedCountPaginator

    def get_queryset(self, request):
        return with_price_precision(super().get_queryset(request))

    open_shown, high_shown, low_shown, close_shown = (price_column(column) for column in ("open", "high", "low", "close"))

    @admin.display(description="volume", ordering="volume")
    def volume_shown(self, obj):
        return format_volume(obj.volume)

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(symbol__in={term, term.upper()}), False


@admin.register(SeriesStats)
class SeriesStatsAdmin(ReadOnlyAdmin):
    list_display = ("symbol", "timeframe", "first_ts", "last_ts", "bar_count", "expected_bars", "coverage_pct",
                    "robust_volatility", "last_scan_at")
    list_filter = ("timeframe", "last_scan_at")
    search_fields = ("symbol",)
    date_hierarchy = "last_scan_at"
