"""The watchlist and its market data: instruments (form and "backfill now"), candles, series statistics.

The candle list is built for a very large table: every query it makes can be answered from an index,
and the unfiltered count comes from PostgreSQL's statistics.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.paginator import Paginator
from django.db import connection
from django.utils.functional import cached_property

from ..api.validators import validate_provider_options
from ..models import Candle, Instrument, SeriesStats
from ..partitions import estimated_rows
from ..providers import PROVIDER_NAMES, check_bar_alignment
from ..quality.thresholds import validate_thresholds
from ..series import series_of
from ..timeframes import BarAlignment
from .base import IntegrityModelAdmin, ReadOnlyAdmin, choice_filter, request_backfills


class InstrumentForm(forms.ModelForm):
    """The model's clean() checks calendar, symbol and timeframes (``integrity.series``' instrument
    rules); the form adds provider and thresholds."""

    provider = forms.ChoiceField(choices=[(name, name) for name in PROVIDER_NAMES], initial="synthetic")
    bar_alignment = forms.ChoiceField(choices=BarAlignment.choices, initial=BarAlignment.CLOCK, required=False,
                                      help_text=Instrument._meta.get_field("bar_alignment").help_text)

    class Meta:
        model = Instrument
        fields = ["symbol", "asset_class", "calendar", "timeframes", "bar_alignment", "provider",
                  "provider_options", "quality_thresholds", "availability_delay_minutes", "active"]

    def clean(self):
        cleaned = super().clean()
        if "provider" in cleaned and "provider_options" in cleaned:
            try:
                validate_provider_options(cleaned["provider"], cleaned["provider_options"], cleaned.get("symbol", ""))
            except ValueError as exc:
                self.add_error("provider_options", str(exc))
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
    list_display = ("symbol", "asset_class", "calendar", "timeframes", "bar_alignment", "provider", "active",
                    "updated_at")
    list_filter = ("asset_class", "provider", "bar_alignment", "active", "calendar", "created_at")
    search_fields = ("symbol",)
    date_hierarchy = "created_at"
    actions = ["backfill_now"]

    @admin.action(description="Backfill selected instruments now (every timeframe)", permissions=["change"])
    def backfill_now(self, request, queryset):
        series, refused = [], []
        for instrument in queryset.order_by("symbol"):
            if not instrument.timeframes:
                refused.append(f"{instrument.symbol} refused: it has no timeframes to backfill")
            series.extend((s.symbol, s.timeframe, None, None) for s in series_of(instrument))
        for reason in refused:
            self.message_user(request, reason, messages.WARNING)
        if series or not refused:
            request_backfills(self, request, series)


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
class CandleAdmin(IntegrityModelAdmin):
    """Built for a very large table: every query on this list can be answered from an index.

    No date hierarchy (its min/max and DISTINCT years scan the whole table); the ``ts`` filter
    offers fixed ranges instead. Search is by exact symbol (served by the (symbol, timeframe, ts)
    index; a substring search would scan).
    """

    list_display = ("symbol", "timeframe", "ts", "open", "high", "low", "close", "volume", "source", "ingested_at")
    list_filter = ("timeframe", CandleSourceFilter, "ts")
    search_fields = ("symbol",)
    search_help_text = "exact symbol, e.g. BTC-USD"
    show_full_result_count = False  # no second COUNT(*) of the whole table on a filtered page
    show_facets = admin.ShowFacets.NEVER  # facet counts (?_facets) would count the whole table per choice
    paginator = EstimatedCountPaginator

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
