"""Four worker processes backfilling different Binance symbols against one local server (Binance's
klines, counting requests and their weight as Binance does): with ``REDIS_URL`` set they stay together
within the configured pace and weight budget; without it each process keeps its own limits and
together they send about four times as much (which shows the check can fail).

The configured limits are small so the test is quick: 5 requests a second, 40 weight a minute (a klines
request weighs 2), pages of 4 klines. The server sends no ``X-MBX-USED-WEIGHT-1M`` header, so only the
client-side accounting under test holds the processes back. The processes start together (a barrier
file) early in a calendar minute, so their burst of a few seconds lies in one weight window."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.exchanges import KLINES, FakeBinance
from tests.helpers import ROOT, add_instrument, worker_database_url

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USD", "ADA-USD")
RATE, WEIGHT, BUDGET = 5, 2, 40
PAGES = 10  # per process: 4 × 10 requests of weight 2 = 80 > BUDGET
# Slots are 1/RATE apart, but a request reaches the server a little after its slot (a busy machine may
# hold a process back), so the ones around it arrive closer together than booked.
TOLERANCE_REQUESTS = 2
TOLERANCE_WEIGHT = len(SYMBOLS) * WEIGHT  # one request per process booked in a minute, arriving in the next

# Waits at a barrier (so all four start together), then runs ``manage.py backfill`` of one symbol.
BACKFILL_AFTER_BARRIER = """
import os, sys, time, django
django.setup()
from pathlib import Path
from django.core.management import call_command
barrier = Path(os.environ["BARRIER"])
(barrier.parent / ("ready-" + sys.argv[1])).touch()
while not barrier.exists():
    time.sleep(0.01)
call_command("backfill", "--symbol", sys.argv[1], "--timeframe", "1h", "--start", "2024-01-01T00:00:00Z",
             "--end", "2024-01-02T16:00:00Z")
"""


class CountingBinance(FakeBinance):
    """Binance's klines, recording when each request arrived (wall clock) and its weight."""

    def __init__(self):
        super().__init__()
        self.arrivals: list[tuple[float, int]] = []
        self.lock = threading.Lock()

    def __call__(self, request):
        with self.lock:
            self.arrivals.append((time.time(), WEIGHT))
        return super().__call__(request)

    def most_in_one_second(self) -> int:
        times = sorted(t for t, _ in self.arrivals)
        return max((sum(1 for u in times if t <= u < t + 1) for t in times), default=0)

    def most_weight_in_one_minute(self) -> int:
        minutes: dict[int, int] = {}
        for t, weight in self.arrivals:
            minutes[int(t // 60)] = minutes.get(int(t // 60), 0) + weight
        return max(minutes.values(), default=0)


def early_in_a_minute() -> None:
    """Start at most 50 s into a calendar minute: the burst (under 5 s) then fits in it."""
    while time.time() % 60 > 50:
        time.sleep(0.5)


def backfill_in_four_processes(httpserver, tmp_path: Path, redis_url: str) -> CountingBinance:
    server = CountingBinance()
    httpserver.expect_request(KLINES, method="GET").respond_with_handler(server)
    for symbol in SYMBOLS:
        add_instrument(symbol, provider="binance", limit=4)
    barrier = tmp_path / "go"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "marketdata_site.settings", "DATABASE_URL": worker_database_url(),
           "REDIS_URL": redis_url, "BARRIER": str(barrier), "LOG_LEVEL": "WARNING",
           "BINANCE_BASE_URL": httpserver.url_for(""), "BINANCE_MAX_REQUESTS_PER_SECOND": str(RATE),
           "BINANCE_WEIGHT_LIMIT": str(BUDGET), "BINANCE_WEIGHT_THRESHOLD": "1", "BINANCE_KLINES_WEIGHT": str(WEIGHT)}
    processes = []
    try:
        for symbol in SYMBOLS:
            with open(tmp_path / f"{symbol}.log", "wb") as log:
                processes.append(subprocess.Popen([sys.executable, "-c", BACKFILL_AFTER_BARRIER, symbol], cwd=ROOT,
                                                  env=env, stdout=log, stderr=subprocess.STDOUT,
                                                  start_new_session=True))
        deadline = time.monotonic() + 90
        while len(list(tmp_path.glob("ready-*"))) < len(SYMBOLS):
            assert time.monotonic() < deadline and all(p.poll() is None for p in processes), logs(tmp_path)
            time.sleep(0.05)
        early_in_a_minute()
        barrier.touch()
        # Until every process is done, or the server has heard nothing for 3 s (all of them waiting
        # for the next minute's weight budget).
        quiet_since, seen = time.monotonic(), 0
        while any(p.poll() is None for p in processes) and time.monotonic() - quiet_since < 3:
            assert time.monotonic() < deadline, logs(tmp_path)
            if len(server.arrivals) != seen:
                quiet_since, seen = time.monotonic(), len(server.arrivals)
            time.sleep(0.05)
    finally:
        for process in processes:  # the ones still waiting for the next minute: each its own session
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    return server


def logs(tmp_path: Path) -> str:
    return "\n".join(f"{p.name}: {p.read_text()[-1500:]}" for p in sorted(tmp_path.glob("*.log")))


def test_with_redis_four_processes_stay_together_within_the_pace_and_the_weight_budget(
        httpserver, tmp_path, redis_server):
    port, _ = redis_server
    server = backfill_in_four_processes(httpserver, tmp_path, f"redis://127.0.0.1:{port}/0")
    assert server.most_in_one_second() <= RATE + TOLERANCE_REQUESTS, server.arrivals
    assert server.most_weight_in_one_minute() <= BUDGET + TOLERANCE_WEIGHT, server.arrivals
    # They used the minute's budget, then waited for the next minute (stopped here).
    assert len(server.arrivals) * WEIGHT >= BUDGET


def test_without_redis_each_process_keeps_its_own_limits_and_together_they_exceed_them(httpserver, tmp_path):
    server = backfill_in_four_processes(httpserver, tmp_path, "")
    assert len(server.arrivals) == len(SYMBOLS) * PAGES, logs(tmp_path)  # every process ran to its end
    assert server.most_in_one_second() > RATE + TOLERANCE_REQUESTS
    assert server.most_weight_in_one_minute() > BUDGET + TOLERANCE_WEIGHT
