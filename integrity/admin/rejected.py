"""The admin screen of the quarantine (``rejected_candles``): bars refused at ingest, read-only,
filterable by series, rule and execution, searchable, exportable as CSV (``integrity.rejected``'s
layout, the same as the API's)."""

from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html_join
from django.utils.safestring import mark_safe

from ..models import BackfillState, RejectedCandle
from ..prices import row_price, with_price_precision
from ..rejected import REJECTED_EXPORT
from ..validation import REASON_CODES
from .base import (
    ExecutionFilter,
    ReadOnlyAdmin,
    choice_filter,
    execution_link,
    export_csv_action,
    export_xlsx_action,
)

RECENT_EXECUTIONS = 20


# One validation rule: the rows that broke it (with or without others). Codes are never substrings of
# one another, so a containment test names exactly one rule.
RuleFilter = choice_filter("rule broken", "rule", REASON_CODES, "rules__contains")


class RecentExecutionFilter(ExecutionFilter):
    """The executions that refused bars, newest first (the most recent few as links; any other by URL)."""

    def recent_executions(self, request) -> list[str]:
        # From the executions table (small, indexed by date): grouping the quarantine would scan it.
        recent = (BackfillState.objects.filter(invalid_bars__gt=0).order_by("-created_at")
                  .values_list("execution_id", flat=True)[:RECENT_EXECUTIONS])
        return [str(e) for e in recent]


VALUE_COLUMNS = ("open", "high", "low", "close", "volume")


def _shown(column: str):
    """A list column showing ``column`` as it came (``RejectedCandleAdmin._value``)."""

    @admin.display(description=column)
    def shown(self, obj):
        return self._value(obj, column)

    shown.__name__ = f"shown_{column}"
    return shown


@admin.register(RejectedCandle)
class RejectedCandleAdmin(ReadOnlyAdmin):
    list_display = ("symbol", "timeframe", "ts", "rules_broken", "shown_open", "shown_high", "shown_low", "shown_close",
                    "shown_volume", "copies", "execution", "rejected_at")
    list_filter = ("timeframe", RuleFilter, RecentExecutionFilter, "provider", "rejected_at")
    search_fields = ("symbol",)
    search_help_text = "symbol, e.g. BTC-USD"
    date_hierarchy = "rejected_at"
    ordering = ("symbol", "timeframe", "ts")
    actions = ["export_csv", "export_xlsx"]
    exclude = ("execution_id",)  # shown as ``execution``, a link
    readonly_fields = ("execution",)

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(symbol__in={term, term.upper()}), False

    def get_queryset(self, request):
        return with_price_precision(super().get_queryset(request))

    def _value(self, obj, column):
        """The value as it came (``nan``, ``inf`` as text), prices at the instrument's precision,
        volume to 10 significant digits (the detail page and the exports keep every digit)."""
        value = (obj.raw_values or {}).get(column, getattr(obj, column))
        if column != "volume":
            return row_price(obj, value)
        return f"{value:.10g}" if isinstance(value, float) else value

    @admin.display(description="rules broken", ordering="rules")
    def rules_broken(self, obj):
        """One rule a line (the list stays narrow enough to show every column at 1,400 px)."""
        return format_html_join(mark_safe("<br>"), "{}", ((rule,) for rule in obj.rules.split(",")))

    @admin.display(description="execution", ordering="execution_id")
    def execution(self, obj):
        """The run that refused the bar: its first 8 characters, linking to it."""
        return execution_link(obj.execution_id)

    shown_open, shown_high, shown_low, shown_close, shown_volume = (_shown(column) for column in VALUE_COLUMNS)

    export_csv = export_csv_action(REJECTED_EXPORT, "rejected bars")
    export_xlsx = export_xlsx_action(REJECTED_EXPORT, "rejected bars")
