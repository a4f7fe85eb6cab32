"""Serializers: what the API shows and accepts."""

from __future__ import annotations

from rest_framework import serializers
from rest_framework.exceptions import ErrorDetail
from rest_framework.settings import api_settings

from ..calendars import validate_calendar_code
from ..models import (
    BackfillState,
    DataAnomaly,
    DuplicateRecordLog,
    HealthCheckRun,
    Instrument,
    ResolutionReason,
    SeriesStats,
    SymbolFailureTracking,
    Timeframe,
)
from ..providers import PROVIDER_NAMES, check_bar_alignment
from ..quality.thresholds import validate_thresholds
from ..ranges import RangeError, check_backfill_range
from ..series import InstrumentRuleError, check_symbol, check_timeframes
from ..timeframes import BarAlignment
from .validators import validate_provider_options, validate_reference


class ReadOnlyModelSerializer(serializers.ModelSerializer):
    """A row as the API shows it: every field in ``Meta.fields`` is read-only (only the services write
    these tables; the API's writes go through their own serializers and actions)."""

    def get_extra_kwargs(self):
        extra = super().get_extra_kwargs()
        for name in self.Meta.fields:
            extra[name] = {**extra.get(name, {}), "read_only": True}
        return extra


class BackfillStateSerializer(ReadOnlyModelSerializer):
    class Meta:
        model = BackfillState
        fields = [
            "execution_id", "symbol", "asset_class", "timeframe", "status", "started_at", "completed_at",
            "records_inserted", "records_updated", "invalid_bars", "error_message", "retry_count", "provider",
            "range_start", "range_end", "heartbeat_at", "checkpoint_ts", "worker", "requested_by", "details",
            "created_at", "updated_at",
        ]


class BackfillRequestSerializer(serializers.Serializer):
    symbol = serializers.CharField(max_length=50)
    timeframe = serializers.ChoiceField(choices=Timeframe.choices)
    start = serializers.DateTimeField(required=False, allow_null=True)
    end = serializers.DateTimeField(required=False, allow_null=True)
    provider = serializers.ChoiceField(choices=PROVIDER_NAMES, required=False, allow_null=True)

    def validate_symbol(self, value):
        if not Instrument.objects.filter(symbol=value).exists():
            raise serializers.ValidationError(f"unknown instrument {value!r}: add it to /api/v1/instruments/ first")
        return value

    def validate(self, attrs):
        instrument = Instrument.objects.filter(symbol=attrs["symbol"]).only("provider").first()
        provider = attrs.get("provider") or (instrument.provider if instrument else None)
        try:
            check_backfill_range(attrs["timeframe"], attrs.get("start"), attrs.get("end"), provider=provider)
        except RangeError as exc:
            raise serializers.ValidationError(
                {exc.field or api_settings.NON_FIELD_ERRORS_KEY: [ErrorDetail(str(exc), code=exc.rule)]}
            ) from None
        return attrs


class DataAnomalySerializer(ReadOnlyModelSerializer):
    class Meta:
        model = DataAnomaly
        fields = [
            "id", "symbol", "timeframe", "anomaly_type", "severity", "description", "affected_rows",
            "resolution_status", "period_start", "period_end", "detected_at", "last_seen_at", "fingerprint",
            "details", "execution_id", "acknowledged_by", "acknowledged_at", "resolved_by", "resolved_at",
            "resolution_note", "resolution_reason", "regressions", "created_at", "updated_at",
        ]


class DataAnomalyListSerializer(ReadOnlyModelSerializer):
    """The list's compact row (details, fingerprint and review fields are on the detail)."""

    class Meta:
        model = DataAnomaly
        fields = ["id", "symbol", "timeframe", "anomaly_type", "severity", "resolution_status", "period_start",
                  "period_end", "affected_rows", "detected_at", "description", "resolution_reason", "regressions"]


class ReviewSerializer(serializers.Serializer):
    note = serializers.CharField(required=False, allow_blank=True, max_length=2000)


class ResolveSerializer(ReviewSerializer):
    """A resolution: its reason (default ``fixed``: a recurrence reopens as a regression; the others
    are never reopened) and an optional note."""

    reason = serializers.ChoiceField(
        choices=ResolutionReason.choices, default=ResolutionReason.FIXED,
        error_messages={"invalid_choice": "unknown reason \"{input}\": expected one of "
                                          + ", ".join(ResolutionReason.values)},
    )


class DuplicateRecordLogSerializer(ReadOnlyModelSerializer):
    duplicate_ids = serializers.ListField(child=serializers.IntegerField(), read_only=True)

    class Meta:
        model = DuplicateRecordLog
        fields = ["id", "symbol", "timeframe", "candle_time", "duplicate_count", "duplicate_ids", "kept_id",
                  "kept_by", "run_id", "cleaned_at", "created_at"]


class SymbolFailureSerializer(ReadOnlyModelSerializer):
    class Meta:
        model = SymbolFailureTracking
        fields = ["symbol", "consecutive_failures", "last_failure_at", "last_success_at", "alert_sent",
                  "alert_sent_at", "last_error", "created_at", "updated_at"]


def _instrument_rule(check, value):
    try:
        check(value)
    except InstrumentRuleError as exc:
        raise serializers.ValidationError(str(exc)) from None
    return value


class InstrumentSerializer(serializers.ModelSerializer):
    timeframes = serializers.ListField(child=serializers.ChoiceField(choices=Timeframe.choices), allow_empty=True)
    provider = serializers.ChoiceField(choices=PROVIDER_NAMES, default="synthetic")
    provider_options = serializers.DictField(required=False)
    reference_provider = serializers.ChoiceField(choices=["", *PROVIDER_NAMES], required=False, allow_blank=True,
                                                 help_text="a second source to reconcile with (empty: none)")
    reference_options = serializers.DictField(required=False)
    reconcile_tolerance = serializers.FloatField(
        required=False, allow_null=True, min_value=0, max_value=99.999,
        help_text="percent; null: the asset class default (RECONCILE_TOLERANCE_PCT)")
    quality_thresholds = serializers.DictField(required=False)

    class Meta:
        model = Instrument
        fields = ["id", "symbol", "asset_class", "calendar", "timeframes", "bar_alignment", "provider",
                  "provider_options", "reference_provider", "reference_options", "reconcile_tolerance",
                  "quality_thresholds", "availability_delay_minutes", "price_decimals", "active", "created_at",
                  "updated_at"]
        read_only_fields = ["id", "created_at", "updated_at"]

    def validate_symbol(self, value):
        if self.instance is not None and value != self.instance.symbol:
            # Candles, executions and anomalies refer to the symbol: a rename would orphan them.
            raise serializers.ValidationError("the symbol of an instrument cannot be changed; add a new one")
        return _instrument_rule(check_symbol, value)

    def validate_calendar(self, value):
        try:
            validate_calendar_code(value)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None
        return value

    def validate(self, attrs):
        provider = attrs.get("provider", getattr(self.instance, "provider", "synthetic"))
        options = attrs.get("provider_options", getattr(self.instance, "provider_options", {}))
        symbol = attrs.get("symbol", getattr(self.instance, "symbol", ""))
        try:
            validate_provider_options(provider, options, symbol)
        except ValueError as exc:
            raise serializers.ValidationError({"provider_options": [str(exc)]}) from None
        reference = attrs.get("reference_provider", getattr(self.instance, "reference_provider", ""))
        reference_options = attrs.get("reference_options", getattr(self.instance, "reference_options", {}))
        try:
            validate_reference(reference, reference_options, symbol)
        except ValueError as exc:
            raise serializers.ValidationError({"reference_options": [str(exc)]}) from None
        alignment = attrs.get("bar_alignment", getattr(self.instance, "bar_alignment", BarAlignment.CLOCK))
        try:
            check_bar_alignment(provider, alignment)
        except ValueError as exc:
            raise serializers.ValidationError({"bar_alignment": [str(exc)]}) from None
        return attrs

    def validate_quality_thresholds(self, value):
        try:
            validate_thresholds(value)
        except (TypeError, ValueError) as exc:
            raise serializers.ValidationError(str(exc)) from None
        return value

    def validate_timeframes(self, value):
        return _instrument_rule(check_timeframes, value)


class SeriesStatsSerializer(ReadOnlyModelSerializer):
    class Meta:
        model = SeriesStats
        fields = ["symbol", "timeframe", "first_ts", "last_ts", "bar_count", "expected_bars", "coverage_pct",
                  "robust_volatility", "last_scan_at", "last_scanned_ts", "updated_at"]


class HealthCheckRunSerializer(ReadOnlyModelSerializer):
    class Meta:
        model = HealthCheckRun
        fields = ["id", "started_at", "finished_at", "duration_ms", "status", "results", "errors", "alerts_sent"]
