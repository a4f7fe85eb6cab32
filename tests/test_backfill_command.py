"""``manage.py backfill`` and ``manage.py reap_backfills`` as a user runs them."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from integrity.backfill import create_backfill_state
from integrity.calendars import expected_bars
from integrity.models import BackfillState, Candle, Instrument
from tests.helpers import add_instrument, utc

pytestmark = pytest.mark.django_db(transaction=True)


def run(*args) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    try:
        call_command("backfill", *args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def daily_csv(tmp_path):
    """A Yahoo-style daily file for 2023: one row per NYSE session."""
    sessions = expected_bars("XNYS", "1d", utc(2023, 1, 1), utc(2024, 1, 1))
    lines = ["Date,Open,High,Low,Close,Adj Close,Volume"]
    price = 130.0
    for i, day in enumerate(sessions):
        o, c = price, price * (1 + ((i % 7) - 3) / 300)
        lines.append(f"{day:%Y-%m-%d},{o:.4f},{max(o, c) * 1.01:.4f},{min(o, c) * 0.99:.4f},{c:.4f},{c:.4f},"
                     f"{50_000_000 + i * 1000}")
        price = c
    path = tmp_path / "AAPL.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, len(sessions)


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

    def test_a_missing_file_fails_the_run_with_exit_code_1(self, tmp_path):
        code, out, _ = run(*CSV_ARGS, "--file", str(tmp_path / "nope.csv"), "--format", "json")
        assert code == 1
        [result] = json.loads(out)
        assert result["status"] == "failed" and "nope.csv" in result["error"]


class TestCommandOutput:
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

    def test_text_output_reports_progress_and_a_summary_table(self):
        add_instrument("A")
        code, out, err = run("--symbols", "A", "--start", "2024-01-01", "--end", "2024-01-02")
        assert code == 0
        assert "[1/1] A 1h: completed +24 inserted" in err
        assert out.splitlines()[0].split()[:4] == ["symbol", "tf", "status", "inserted"]


class TestCommandArguments:
    def test_an_unknown_symbol_without_asset_class_is_exit_code_2(self):
        with pytest.raises(CommandError, match="unknown instrument") as error:
            call_command("backfill", "--symbols", "NOPE", stdout=StringIO(), stderr=StringIO())
        assert error.value.returncode == 2

    def test_an_unknown_calendar_is_exit_code_2(self):
        with pytest.raises(CommandError) as error:
            call_command("backfill", "--symbols", "X", "--asset-class", "equity", "--calendar", "MOON",
                         stdout=StringIO(), stderr=StringIO())
        assert error.value.returncode == 2
        assert not Instrument.objects.exists()

    def test_a_malformed_date_is_exit_code_2(self):
        add_instrument("A")
        with pytest.raises(CommandError, match="not an ISO date") as error:
            call_command("backfill", "--symbols", "A", "--start", "yesterday", stdout=StringIO(), stderr=StringIO())
        assert error.value.returncode == 2


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
