"""``manage.py backfill`` and ``manage.py reap_backfills`` as a user runs them."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connections
from django.utils import timezone

from integrity.backfill import create_backfill_state
from integrity.calendars import expected_bars
from integrity.models import BackfillState, Candle, DataAnomaly, Instrument
from integrity.providers import ProviderError
from tests.helpers import (
    ROOT,
    TtyStringIO,
    add_instrument,
    on_each_page,
    refused_backfill,
    utc,
    worker_database_url,
)
from tests.helpers import run_backfill_command as run

pytestmark = pytest.mark.django_db(transaction=True)


def write_daily_csv(path, start, end, extra_lines=()):
    """A Yahoo-style daily file: one row per NYSE session in [start, end)."""
    sessions = expected_bars("XNYS", "1d", start, end)
    lines = ["Date,Open,High,Low,Close,Adj Close,Volume"]
    price = 130.0
    for i, day in enumerate(sessions):
        o, c = price, price * (1 + ((i % 7) - 3) / 300)
        lines.append(f"{day:%Y-%m-%d},{o:.4f},{max(o, c) * 1.01:.4f},{min(o, c) * 0.99:.4f},{c:.4f},{c:.4f},"
                     f"{50_000_000 + i * 1000}")
        price = c
    lines.extend(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path, len(sessions)


@pytest.fixture
def daily_csv(tmp_path):
    """2023: 250 NYSE sessions."""
    return write_daily_csv(tmp_path / "AAPL.csv", utc(2023, 1, 1), utc(2024, 1, 1))


CSV_ARGS = ["--provider", "csv", "--symbol", "AAPL", "--timeframe", "1d", "--asset-class", "equity",
            "--calendar", "XNYS", "--start", "2023-01-01", "--end", "2024-01-01"]


class TestCsvBackfill:
    def test_it_loads_a_daily_file_and_registers_the_instrument(self, daily_csv):
        path, sessions = daily_csv
        code, out, _ = run(*CSV_ARGS, "--file", str(path))
        assert code == 0
        assert sessions == 250
        assert Candle.objects.filter(symbol="AAPL", timeframe="1d").count() == 250
        instrument = Instrument.objects.get(symbol="AAPL")
        assert (instrument.asset_class, instrument.calendar, instrument.provider) == ("equity", "XNYS", "csv")
        assert "1 completed, 0 failed or refused" in out

    def test_running_it_again_inserts_zero_bars(self, daily_csv):
        path, _ = daily_csv
        run(*CSV_ARGS, "--file", str(path))
        code, out, _ = run(*CSV_ARGS, "--file", str(path), "--format", "json")
        assert code == 0
        [result] = json.loads(out)
        assert (result["status"], result["inserted"], result["updated"]) == ("completed", 0, 0)

    def test_the_acceptance_command_loads_the_file_and_a_rerun_inserts_zero(self, daily_csv):
        # Exactly as the issue spells it: no --start/--end, so the range logic decides.
        path, sessions = daily_csv
        args = ["--provider", "csv", "--file", str(path), "--symbol", "AAPL", "--timeframe", "1d",
                "--asset-class", "equity", "--calendar", "XNYS"]
        code, out, _ = run(*args, "--format", "json")
        assert code == 0
        [first] = json.loads(out)
        assert (first["status"], first["inserted"], first["invalid"]) == ("completed", sessions, 0)
        assert Candle.objects.filter(symbol="AAPL", timeframe="1d").count() == sessions
        code, out, _ = run(*args, "--format", "json")
        assert code == 0
        [again] = json.loads(out)
        assert (again["status"], again["inserted"], again["updated"]) == ("completed", 0, 0)
        assert Candle.objects.count() == sessions

    def test_a_new_series_from_a_file_starts_at_its_first_bar_not_at_the_lookback(self, tmp_path, settings):
        settings.BACKFILL_LOOKBACK_DAYS = {**settings.BACKFILL_LOOKBACK_DAYS, "1d": 30}
        path, sessions = write_daily_csv(tmp_path / "IBM.csv", utc(2004, 1, 1), utc(2006, 1, 1))
        code, out, _ = run("--file", str(path), "--symbol", "IBM", "--timeframe", "1d", "--asset-class", "equity",
                           "--calendar", "XNYS", "--format", "json")
        assert code == 0
        [result] = json.loads(out)
        assert result["range_start"] == utc(2004, 1, 2).isoformat()
        assert result["inserted"] == sessions == 504

    def test_a_later_run_of_the_registered_instrument_reuses_its_file(self, daily_csv, tmp_path, monkeypatch):
        path, _ = daily_csv
        monkeypatch.chdir(path.parent)
        run(*CSV_ARGS, "--file", path.name)  # relative: stored as an absolute path
        monkeypatch.chdir(tmp_path.parent)
        code, out, _ = run("--symbols", "AAPL", "--timeframe", "1d", "--format", "json")
        assert code == 0
        assert json.loads(out)[0]["inserted"] == 0
        assert Instrument.objects.get(symbol="AAPL").provider_options["file"] == str(path)

    def test_file_implies_the_csv_provider(self, daily_csv):
        path, sessions = daily_csv
        add_instrument("AAPL", "equity", "XNYS", ("1d",))  # a synthetic instrument
        code, out, _ = run("--symbols", "AAPL", "--timeframe", "1d", "--file", str(path),
                           "--start", "2023-01-01", "--end", "2024-01-01", "--format", "json")
        assert code == 0
        assert json.loads(out)[0]["inserted"] == sessions
        assert set(Candle.objects.values_list("source", flat=True)) == {"csv"}

    def test_a_missing_file_is_exit_code_2_and_registers_nothing(self, tmp_path):
        error = refused_backfill(*CSV_ARGS, "--file", str(tmp_path / "nope.csv"), match="nope.csv.*no such file")
        assert error.returncode == 2
        assert not Instrument.objects.exists() and not BackfillState.objects.exists()

    def test_a_file_for_several_symbols_is_refused(self, daily_csv):
        path, _ = daily_csv
        error = refused_backfill("--symbols", "AAPL,MSFT", "--asset-class", "equity", "--file", str(path), match="one symbol")
        assert error.returncode == 2
        assert not Instrument.objects.exists()

    def test_a_file_removed_after_registration_fails_the_run_with_exit_code_1(self, daily_csv):
        path, _ = daily_csv
        run(*CSV_ARGS, "--file", str(path))
        path.unlink()
        code, out, _ = run("--symbols", "AAPL", "--timeframe", "1d", "--start", "2024-01-01", "--format", "json")
        assert code == 1
        [result] = json.loads(out)
        assert result["status"] == "failed" and "AAPL.csv" in result["error"]
        assert BackfillState.objects.get(execution_id=result["execution_id"]).status == "failed"

    def test_a_timestamp_twice_in_the_file_rejects_both_copies_and_the_run_completes(self, tmp_path):
        path, sessions = write_daily_csv(tmp_path / "AAPL.csv", utc(2023, 1, 1), utc(2023, 2, 1),
                                         extra_lines=["2023-01-17,1,2,0.5,1.5,1.5,100"])
        code, out, _ = run(*CSV_ARGS, "--file", str(path), "--format", "json")
        assert code == 0
        [result] = json.loads(out)
        assert (result["status"], result["inserted"], result["invalid"]) == ("completed", sessions - 1, 2)
        assert result["invalid_reasons"] == {"duplicate_ts": 2}
        assert not Candle.objects.filter(ts=utc(2023, 1, 17)).exists()
        anomaly = DataAnomaly.objects.get(anomaly_type="invalid_ohlc")
        assert anomaly.affected_rows == 2 and str(anomaly.execution_id) == result["execution_id"]


class TestCommandOutput:
    @pytest.mark.parametrize("flag", ["--symbols", "--symbol"])
    def test_both_spellings_take_a_comma_separated_list(self, flag):
        add_instrument("A")
        add_instrument("B")
        code, out, _ = run(flag, "A, B", "--start", "2024-01-01", "--end", "2024-01-02", "--format", "json")
        assert code == 0
        assert [(r["symbol"], r["inserted"]) for r in json.loads(out)] == [("A", 24), ("B", 24)]

    def test_concurrency_runs_series_in_parallel_each_on_its_own_connection(self, monkeypatch):

        for symbol in "AB":
            add_instrument(symbol)
        both_fetching = threading.Barrier(2, timeout=20)  # only passes if the two runs overlap
        seen = []

        def first_page(i):
            if i == 0:
                seen.append(connections["default"])  # Django's per-thread connection
                both_fetching.wait()

        on_each_page(monkeypatch, first_page)
        code, out, _ = run("--all", "--start", "2024-01-01", "--end", "2024-01-02", "--concurrency", "2",
                           "--format", "json")
        assert code == 0, out
        assert [r["status"] for r in json.loads(out)] == ["completed", "completed"]
        assert len({id(c) for c in seen}) == 2

    def test_strict_fails_the_run_on_an_invalid_bar_and_exits_1(self):
        add_instrument("A", invalid=["2024-01-01T05:00:00+00:00"])
        code, out, _ = run("--symbols", "A", "--start", "2024-01-01", "--end", "2024-01-02", "--format", "json")
        assert code == 0 and json.loads(out)[0]["invalid"] == 1
        Candle.objects.all().delete()
        code, out, _ = run("--symbols", "A", "--start", "2024-01-01", "--end", "2024-01-02", "--strict",
                           "--format", "json")
        assert code == 1
        [result] = json.loads(out)
        assert result["status"] == "failed" and result["error"].startswith("--strict")

    def test_a_terminal_gets_a_progress_bar_with_rate_and_eta_not_in_error_red(self):
        add_instrument("A")
        err = TtyStringIO()
        call_command("backfill", "--symbols", "A", "--start", "2024-01-01", "--end", "2024-01-03",
                     "--batch-size", "12", stdout=StringIO(), stderr=err, force_color=True)
        text = err.getvalue()
        final = text.rsplit("\r", 1)[-1]
        assert final.startswith("[1/1] A 1h: 100%") and "48/48" in final
        assert "bar/s" in final and "<00:00" in final  # rate and ETA
        assert "completed: +48 inserted, 0 updated, 0 invalid" in final
        assert "\x1b[31" not in text  # Django's error style (red) is for errors

    def test_a_terminal_gets_one_line_per_series_when_they_run_at_once(self):
        for symbol in "AB":
            add_instrument(symbol)
        err = TtyStringIO()
        call_command("backfill", "--all", "--start", "2024-01-01", "--end", "2024-01-02", "--concurrency", "2",
                     stdout=StringIO(), stderr=err)
        text = err.getvalue()
        assert "A 1h" in text and "B 1h" in text
        assert text.count("completed: +24 inserted") == 2

    def test_without_a_terminal_stderr_stays_quiet(self):
        add_instrument("A")
        code, out, err = run("--symbols", "A", "--start", "2024-01-01", "--end", "2024-01-02", "--batch-size", "6")
        assert code == 0 and err == ""
        assert "completed" in out

    def test_json_output_draws_no_bar_even_on_a_terminal(self):
        add_instrument("A")
        err = TtyStringIO()
        call_command("backfill", "--symbols", "A", "--start", "2024-01-01", "--end", "2024-01-02", "--format",
                     "json", stdout=StringIO(), stderr=err)
        assert err.getvalue() == ""

    def test_json_output_has_one_object_per_execution(self):
        add_instrument("A", timeframes=("1h",))
        add_instrument("B", timeframes=("1h", "4h"))
        code, out, _ = run("--symbols", "A,B", "--start", "2024-01-01", "--end", "2024-01-02", "--format", "json")
        assert code == 0
        rows = json.loads(out)
        assert [(r["symbol"], r["timeframe"], r["inserted"]) for r in rows] == [
            ("A", "1h", 24), ("B", "1h", 24), ("B", "4h", 6)]
        assert all(BackfillState.objects.filter(execution_id=r["execution_id"]).exists() for r in rows)

    def test_all_runs_every_active_instrument(self):
        add_instrument("A")
        add_instrument("B")
        Instrument.objects.filter(symbol="B").update(active=False)
        code, out, _ = run("--all", "--start", "2024-01-01", "--end", "2024-01-02", "--format", "json")
        assert code == 0
        assert [r["symbol"] for r in json.loads(out)] == ["A"]

    def test_concurrency_runs_several_series_at_once(self):
        for symbol in "ABCD":
            add_instrument(symbol)
        code, out, _ = run("--all", "--start", "2024-01-01", "--end", "2024-01-03", "--concurrency", "2",
                           "--format", "json")
        assert code == 0
        assert sorted(r["inserted"] for r in json.loads(out)) == [48] * 4

    def test_a_refused_series_names_the_holder_and_exits_1(self):
        add_instrument("A")
        holder = create_backfill_state("A", "1h", "crypto")
        code, out, _ = run("--symbols", "A", "--start", "2024-01-01", "--end", "2024-01-02")
        assert code == 1
        assert "refused" in out and str(holder.execution_id) in out

    def test_text_output_is_a_summary_table(self):
        add_instrument("A")
        code, out, err = run("--symbols", "A", "--start", "2024-01-01", "--end", "2024-01-02")
        assert code == 0
        lines = out.splitlines()
        assert lines[0].split()[:4] == ["symbol", "tf", "status", "inserted"]
        assert lines[2].split()[:4] == ["A", "1h", "completed", "24"]


class TestCommandArguments:
    def test_an_unknown_symbol_without_asset_class_is_exit_code_2(self):
        error = refused_backfill("--symbols", "NOPE", match="unknown instrument")
        assert error.returncode == 2

    def test_an_unknown_calendar_is_exit_code_2(self):
        error = refused_backfill("--symbols", "X", "--asset-class", "equity", "--calendar", "MOON")
        assert error.returncode == 2
        assert not Instrument.objects.exists()

    def test_a_malformed_date_is_exit_code_2(self):
        add_instrument("A")
        error = refused_backfill("--symbols", "A", "--start", "yesterday", match="not an ISO date")
        assert error.returncode == 2

    def test_a_malformed_date_registers_no_instrument(self):
        refused_backfill("--symbols", "NEW", "--asset-class", "crypto", "--end", "soon", match="not an ISO date")
        assert not Instrument.objects.exists()

    @pytest.mark.parametrize("flag", ["--concurrency", "--batch-size"])
    def test_a_non_positive_count_is_exit_code_2(self, flag):
        add_instrument("A")
        error = refused_backfill("--symbols", "A", flag, "0", match="at least 1")
        assert error.returncode == 2

    def test_no_series_named_is_exit_code_2(self):
        error = refused_backfill(match="--symbols A,B or --all")
        assert error.returncode == 2


class TestReapCommand:
    def test_it_reaps_dead_executions_and_lists_them(self, settings):
        settings.BACKFILL_HEARTBEAT_TIMEOUT_SECONDS = 60
        state = create_backfill_state("A", "1h", "crypto")
        state.mark_started()
        BackfillState.objects.filter(pk=state.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
        out = StringIO()
        call_command("reap_backfills", "--format", "json", stdout=out)
        [row] = json.loads(out.getvalue())
        assert row["execution_id"] == str(state.execution_id)
        assert BackfillState.objects.get(pk=state.pk).status == "failed"


class TestAFailedCsvLoadRegistersNothing:
    """The file and every option are checked before an instrument is registered or a series claimed."""

    def assert_nothing_registered(self):
        assert not Instrument.objects.exists()
        assert not BackfillState.objects.exists()
        assert not Candle.objects.exists()

    def test_an_unknown_time_zone_is_a_usage_error(self, daily_csv):
        path, _ = daily_csv
        error = refused_backfill(*CSV_ARGS, "--file", str(path), "--tz", "Mars/Olympus")
        assert error.returncode == 2 and "--tz" in str(error) and "unknown time zone 'Mars/Olympus'" in str(error)
        self.assert_nothing_registered()

    def test_a_binary_file_is_exit_1(self, tmp_path):
        path = tmp_path / "AAPL.csv"
        path.write_bytes(b"PK\x03\x04\x14\x00\x06\x00" + bytes(range(256)) * 4)  # a zip (an .xlsx) renamed
        error = refused_backfill(*CSV_ARGS, "--file", str(path))
        assert error.returncode == 1
        assert "nothing was registered or claimed" in str(error) and "a binary file, not CSV text" in str(error)
        self.assert_nothing_registered()

    @pytest.mark.parametrize("content, words", [
        pytest.param("Date,Open,High,Low,Close,Volume,Börse\n2023-01-03,1,2,0.5,1.5,10,x\n".encode("latin-1"),
                     "not a UTF-8 text file", id="not-utf8-text"),
        pytest.param(b"Date,Price\n2023-01-03,1.5\n",
                     "missing required column(s) open, high, low, close, volume", id="wrong-columns"),
        pytest.param(b"", "CSV file is empty", id="empty"),
        pytest.param(b"Date,Open,High,Low,Close,Volume\n", "a header but no bars", id="header-without-bars"),
    ])
    def test_an_unreadable_file_is_exit_1_saying_why(self, tmp_path, content, words):
        path = tmp_path / "AAPL.csv"
        path.write_bytes(content)
        error = refused_backfill(*CSV_ARGS, "--file", str(path))
        assert error.returncode == 1 and words in str(error)
        self.assert_nothing_registered()

    def test_an_unparseable_timestamp_anywhere_in_the_file_is_exit_1_naming_the_line(self, tmp_path):
        path, sessions = write_daily_csv(tmp_path / "AAPL.csv", utc(2023, 1, 1), utc(2024, 1, 1),
                                         extra_lines=["yesterday,1,2,0.5,1.5,1.5,100"])
        error = refused_backfill(*CSV_ARGS, "--file", str(path))
        assert error.returncode == 1 and f"unparseable timestamp 'yesterday' at line {sessions + 2}" in str(error)
        self.assert_nothing_registered()

    def test_a_timestamp_outside_the_range_is_checked_too(self, tmp_path):
        # The run would only read 2023; the file is checked whole, as the nightly run reads it.
        path, _ = write_daily_csv(tmp_path / "AAPL.csv", utc(2023, 1, 1), utc(2024, 1, 1),
                                  extra_lines=["2025-02-30,1,2,0.5,1.5,1.5,100"])
        assert refused_backfill(*CSV_ARGS, "--file", str(path)).returncode == 1
        self.assert_nothing_registered()

    def test_a_registered_instrument_is_left_as_it_was(self, daily_csv, tmp_path):
        path, _ = daily_csv
        assert run(*CSV_ARGS, "--file", str(path))[0] == 0
        before = Instrument.objects.values().get()
        executions = list(BackfillState.objects.values_list("execution_id", "status"))
        bad = tmp_path / "bad.csv"
        bad.write_text("Date,Open\n2024-01-02,1\n")
        assert refused_backfill(*CSV_ARGS, "--file", str(bad)).returncode == 1
        assert Instrument.objects.values().get() == before
        assert list(BackfillState.objects.values_list("execution_id", "status")) == executions

    def test_a_new_csv_instrument_needs_a_file(self):
        error = refused_backfill("--provider", "csv", "--symbol", "AAPL", "--asset-class", "equity")
        assert error.returncode == 2 and "needs --file" in str(error)
        self.assert_nothing_registered()

    def test_the_file_options_are_stored_on_the_registered_instrument(self, daily_csv):
        path, _ = daily_csv
        assert run(*CSV_ARGS, "--file", str(path), "--tz", "America/New_York", "--date-format", "%Y-%m-%d")[0] == 0
        assert Instrument.objects.get().provider_options == {"file": str(path), "tz": "America/New_York",
                                                            "date_format": "%Y-%m-%d"}

    @pytest.mark.slow  # starts a Django process
    def test_a_user_sees_the_reason_and_exit_code_1(self, tmp_path):
        import os
        import subprocess
        import sys


        path = tmp_path / "AAPL.csv"
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
        env = {**os.environ, "DATABASE_URL": worker_database_url(), "DJANGO_SETTINGS_MODULE": "marketdata_site.settings"}
        done = subprocess.run([sys.executable, "manage.py", "backfill", *CSV_ARGS, "--file", str(path)],
                              cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 1, done.stderr[-2000:]
        assert "the file cannot be loaded (nothing was registered or claimed)" in done.stderr
        assert "a binary file, not CSV text (a NUL byte at offset 8)" in done.stderr
        self.assert_nothing_registered()


class TestTimeframeNotListed:
    """``--timeframe`` the instrument does not list: refused (exit 2), or added with ``--add-timeframe``."""

    def test_it_is_a_usage_error_saying_so_and_how_to_add_it(self):
        add_instrument("A", timeframes=("1h",))
        error = refused_backfill("--symbols", "A", "--timeframe", "1d", "--start", "2024-01-01", "--end", "2024-01-05",
                                 match=r"--timeframe 1d is not in the timeframes of A \(1h\)")
        assert error.returncode == 2
        assert "--add-timeframe" in str(error)
        assert not BackfillState.objects.exists() and not Candle.objects.exists()
        assert Instrument.objects.get(symbol="A").timeframes == ["1h"]

    def test_with_all_it_names_every_instrument_lacking_it(self):
        add_instrument("A", timeframes=("1h",))
        add_instrument("B", timeframes=("1h", "1d"))
        add_instrument("C", timeframes=("4h",))
        error = refused_backfill("--all", "--timeframe", "1d", "--start", "2024-01-01", "--end", "2024-01-05")
        assert "A (1h), C (4h)" in str(error) and "B" not in str(error).split("timeframes of")[1].split(":")[0]

    def test_add_timeframe_adds_it_and_backfills_it(self):
        add_instrument("A", timeframes=("1h",))
        code, out, err = run("--symbols", "A", "--timeframe", "1d", "--add-timeframe", "--start", "2024-01-01",
                             "--end", "2024-01-05", "--format", "json")
        assert code == 0
        assert [(r["timeframe"], r["inserted"]) for r in json.loads(out)] == [("1d", 4)]
        assert Instrument.objects.get(symbol="A").timeframes == ["1h", "1d"]
        assert "A: added timeframe 1d to the instrument's timeframes (now 1h, 1d)" in err

    def test_an_added_timeframe_whose_load_stores_nothing_is_removed_again(self, monkeypatch):
        add_instrument("A", timeframes=("1h",))

        def failing(page):
            raise ProviderError("the source is down")

        on_each_page(monkeypatch, failing)
        code, _, err = run("--symbols", "A", "--timeframe", "1d", "--add-timeframe", "--start", "2024-01-01",
                           "--end", "2024-01-05")
        assert code == 1
        assert Instrument.objects.get(symbol="A").timeframes == ["1h"]
        assert "timeframe 1d not added after all" in err

    def test_a_listed_timeframe_needs_no_flag(self):
        add_instrument("A", timeframes=("1h", "1d"))
        code, _, err = run("--symbols", "A", "--timeframe", "1d", "--start", "2024-01-01", "--end", "2024-01-05")
        assert code == 0 and "added" not in err
