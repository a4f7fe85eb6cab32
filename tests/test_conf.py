"""Every setting the app reads is declared once in ``integrity.conf`` (name, default, type, meaning);
``settings.py`` reads each from the environment with that default, and ``conf`` sees overrides."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import global_settings

from integrity.conf import SETTINGS, SettingError, conf
from tests.test_settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "integrity"
TIMEFRAME_SUFFIXES = ("1M", "5M", "15M", "1H", "4H", "1D")


def app_sources():
    for path in sorted(APP.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if "/migrations/" not in relative and relative != "integrity/conf.py":
            yield relative, path.read_text()


def environment_names():
    """Every environment variable settings.py reads for a declared setting."""
    names = set(SETTINGS)
    for name in ("BACKFILL_LOOKBACK_DAYS", "BACKFILL_MAX_BARS"):
        names |= {f"{name}_{suffix}" for suffix in TIMEFRAME_SUFFIXES}
    names |= {f"STALE_AVAILABILITY_DELAY_MINUTES_{suffix}" for suffix in ("EQUITY", "CRYPTO", "FOREX")}
    return names


@pytest.fixture
def clean_environment(monkeypatch):
    for name in environment_names():
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


class TestOneDeclarationPerSetting:
    def test_no_module_reads_a_setting_with_its_own_default(self):
        offenders = [f"{path}:{n}" for path, text in app_sources()
                     for n, line in enumerate(text.splitlines(), 1) if "getattr(settings" in line]
        assert offenders == []

    def test_every_setting_the_app_reads_is_declared_or_is_djangos_own(self):
        read = {name for path, text in app_sources()
                for name in re.findall(r"\b(?:settings|conf)\.([A-Z][A-Z0-9_]+)\b", text)}
        undeclared = {name for name in read if name not in SETTINGS and not hasattr(global_settings, name)}
        assert undeclared == set()

    def test_every_declared_setting_says_what_it_means(self):
        assert [name for name, setting in SETTINGS.items() if len(setting.doc.split()) < 3] == []

    def test_quality_thresholds_and_the_watermark_slack_are_defined(self, settings):
        assert settings.QUALITY_THRESHOLDS == {}
        assert settings.DETECTION_WATERMARK_SLACK == conf.default("DETECTION_WATERMARK_SLACK")


class TestSettingsModule:
    def test_its_defaults_are_the_declared_ones(self, clean_environment):
        module = load_settings(clean_environment)
        differing = {name: (getattr(module, name, "<missing>"), conf.default(name)) for name in SETTINGS
                     if getattr(module, name, "<missing>") != conf.default(name)}
        assert differing == {}

    @pytest.mark.parametrize("name", sorted(name for name, s in SETTINGS.items()
                                            if isinstance(s.default, bool | int | float | str | list)))
    def test_it_reads_each_declared_setting_from_the_environment(self, clean_environment, name):
        default = SETTINGS[name].default
        given, expected = {
            bool: (str(not default).lower(), not default),
            int: ("7", 7),
            float: ("7.5", 7.5),
            list: ("a.example, b.example", ["a.example", "b.example"]),
        }.get(type(default), ("5/min", "5/min") if name.startswith("API_THROTTLE") else ("x-value", "x-value"))
        module = load_settings(clean_environment, **{name: given})
        assert getattr(module, name) == expected

    def test_a_per_timeframe_setting_is_read_per_timeframe(self, clean_environment):
        module = load_settings(clean_environment, BACKFILL_MAX_BARS="1000", BACKFILL_MAX_BARS_1M="10",
                               BACKFILL_LOOKBACK_DAYS_1H="2")
        assert module.BACKFILL_MAX_BARS == {"1m": 10, "5m": 1000, "15m": 1000, "1h": 1000, "4h": 1000, "1d": 1000}
        assert module.BACKFILL_LOOKBACK_DAYS == {**conf.default("BACKFILL_LOOKBACK_DAYS"), "1h": 2}

    def test_a_per_asset_class_setting_is_read_per_asset_class(self, clean_environment):
        module = load_settings(clean_environment, STALE_AVAILABILITY_DELAY_MINUTES_FOREX="9")
        assert module.STALE_AVAILABILITY_DELAY_MINUTES == {"equity": 15, "crypto": 1, "forex": 9}


class TestConf:
    def test_a_test_override_is_seen_at_once(self, settings):
        settings.BACKFILL_BATCH_SIZE = 7
        assert conf.BACKFILL_BATCH_SIZE == 7
        settings.BACKFILL_BATCH_SIZE = 9
        assert conf.BACKFILL_BATCH_SIZE == 9

    def test_an_absent_none_or_blank_setting_takes_the_declared_default(self, settings):
        del settings.ALPACA_FEED
        assert conf.ALPACA_FEED == "iex"
        settings.ALPACA_FEED = None
        assert conf.ALPACA_FEED == "iex"
        settings.ALPACA_FEED = "  "
        assert conf.ALPACA_FEED == "iex"

    def test_values_are_coerced_to_the_declared_type(self, settings):
        settings.BACKFILL_FINISH_BACKOFF = "0.25"
        settings.PROVIDER_ALLOWED_HOSTS = "a.example, b.example:8443"
        settings.CCXT_ENABLE_RATE_LIMIT = "off"
        assert conf.BACKFILL_FINISH_BACKOFF == 0.25
        assert conf.PROVIDER_ALLOWED_HOSTS == ["a.example", "b.example:8443"]
        assert conf.CCXT_ENABLE_RATE_LIMIT is False

    def test_a_per_timeframe_override_keeps_the_other_timeframes_defaults(self, settings):
        settings.BACKFILL_MAX_BARS = {"1m": 1000}
        assert conf.BACKFILL_MAX_BARS == {**conf.default("BACKFILL_MAX_BARS"), "1m": 1000}

    def test_a_per_asset_class_override_keeps_the_other_asset_classes_defaults(self, settings):
        settings.STALE_AVAILABILITY_DELAY_MINUTES = {"crypto": 3}
        assert conf.STALE_AVAILABILITY_DELAY_MINUTES == {"equity": 15, "crypto": 3, "forex": 5}

    def test_a_value_of_the_wrong_type_is_an_error_naming_the_setting(self, settings):
        settings.BACKFILL_BATCH_SIZE = "many"
        with pytest.raises(SettingError, match="setting BACKFILL_BATCH_SIZE must be an integer, got 'many'"):
            _ = conf.BACKFILL_BATCH_SIZE

    def test_an_undeclared_name_is_refused(self):
        with pytest.raises(AttributeError, match="NO_SUCH_SETTING is not a declared setting"):
            _ = conf.NO_SUCH_SETTING

    def test_a_default_is_a_copy_the_caller_may_change(self):
        conf.default("BACKFILL_MAX_BARS")["1m"] = 1
        assert conf.default("BACKFILL_MAX_BARS")["1m"] == SETTINGS["BACKFILL_MAX_BARS"].default["1m"]

    def test_a_credential_comes_from_the_settings_else_the_environment(self, settings, monkeypatch):
        settings.CCXT_KRAKEN_API_KEY = "from-settings"
        monkeypatch.setenv("CCXT_KRAKEN_API_KEY", "from-environment")
        assert conf.credential("CCXT_KRAKEN_API_KEY") == "from-settings"
        del settings.CCXT_KRAKEN_API_KEY
        assert conf.credential("CCXT_KRAKEN_API_KEY") == "from-environment"
