"""The series (integrity.series): the active list, and the instrument rules every door applies."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from integrity.admin import InstrumentForm
from integrity.api.serializers import InstrumentSerializer
from integrity.models import Instrument
from integrity.series import (
    InstrumentRuleError,
    Series,
    active_series,
    check_symbol,
    check_timeframes,
    instrument_rule_errors,
    series_of,
)

from .helpers import add_instrument

pytestmark = pytest.mark.django_db


class TestActiveSeries:
    def test_it_lists_every_active_instrument_times_its_timeframes_by_symbol(self):
        add_instrument("MSFT", asset_class="equity", calendar="XNYS", timeframes=("1d", "1h"))
        add_instrument("BTC-USD", timeframes=("1h",))
        assert active_series() == [
            Series("BTC-USD", "1h", "24/7", "crypto", "clock"),
            Series("MSFT", "1d", "XNYS", "equity", "clock"),
            Series("MSFT", "1h", "XNYS", "equity", "clock"),
        ]

    def test_inactive_instruments_are_not_series(self):
        add_instrument("OLD-USD")
        Instrument.objects.filter(symbol="OLD-USD").update(active=False)
        assert active_series() == []

    def test_a_timeframe_stored_twice_is_one_series(self):
        add_instrument("BTC-USD", timeframes=("1h", "1h", "1d"))
        assert [s.timeframe for s in active_series()] == ["1h", "1d"]

    def test_it_can_be_narrowed_to_symbols(self):
        add_instrument("BTC-USD")
        add_instrument("ETH-USD")
        assert [s.symbol for s in active_series(["ETH-USD"])] == ["ETH-USD"]

    def test_the_series_of_one_instrument_include_an_inactive_one(self):
        instrument = add_instrument("OLD-USD", timeframes=("1d", "1h"))
        instrument.active = False
        assert [(s.symbol, s.timeframe) for s in series_of(instrument)] == [("OLD-USD", "1d"), ("OLD-USD", "1h")]


class TestInstrumentRules:
    @pytest.mark.parametrize("symbol", ["EUR/USD", "BTC USD", " AAPL", "AAPL\n", ""])
    def test_a_symbol_has_no_slash_and_no_whitespace(self, symbol):
        with pytest.raises(InstrumentRuleError, match="no '/' and no whitespace") as caught:
            check_symbol(symbol)
        assert caught.value.field == "symbol"

    def test_each_timeframe_once(self):
        with pytest.raises(InstrumentRuleError, match="each timeframe once"):
            check_timeframes(["1d", "1h", "1d"])

    def test_timeframes_are_a_list_of_known_ones(self):
        with pytest.raises(InstrumentRuleError, match="a list of timeframes among"):
            check_timeframes(["2d"])

    def test_all_broken_rules_are_reported_by_field(self):
        assert set(instrument_rule_errors("EUR/USD", ["1h", "1h"])) == {"symbol", "timeframes"}
        assert instrument_rule_errors("EURUSD", ["1h", "1d"]) == {}


FORM = {"symbol": "EURUSD", "asset_class": "forex", "calendar": "24/5", "timeframes": ["1h"],
        "bar_alignment": "clock", "provider": "synthetic", "provider_options": "{}",
        "quality_thresholds": "{}", "active": "on"}


class TestEveryDoorAppliesTheRules:
    """The API, the admin and the backfill CLI refuse the same instruments."""

    @pytest.mark.parametrize("change, field, message", [
        ({"symbol": "EUR/USD"}, "symbol", "no '/'"),
        ({"timeframes": ["1h", "1h"]}, "timeframes", "each timeframe once"),  # a hand-made POST: two ticks
    ])
    def test_the_admin_form_refuses_what_the_api_refuses(self, change, field, message):
        form = InstrumentForm(data={**FORM, **change})
        assert not form.is_valid()
        assert message in " ".join(form.errors[field])
        api = InstrumentSerializer(data={**FORM, "timeframes": ["1h"], "provider_options": {},
                                         "quality_thresholds": {}, "active": True,
                                         **{k: (["1h", "1h"] if k == "timeframes" else v) for k, v in change.items()}})
        assert not api.is_valid()
        assert message in " ".join(str(e) for e in api.errors[field])

    def test_the_admin_form_accepts_a_valid_instrument(self):
        form = InstrumentForm(data=FORM)
        assert form.is_valid(), form.errors

    def test_the_backfill_cli_refuses_to_register_a_symbol_that_breaks_the_rules(self):
        with pytest.raises(CommandError, match="cannot register instrument 'EUR/USD': a symbol has no '/'") as caught:
            call_command("backfill", "--symbols", "EUR/USD", "--asset-class", "forex", stdout=io.StringIO(),
                         stderr=io.StringIO())
        assert caught.value.returncode == 2
        assert not Instrument.objects.exists()
