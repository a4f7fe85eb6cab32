"""Helpers shared by tests: registering instruments, reading back stored candles, running the backfill
command, fetching from a provider against the local HTTP server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path

import pandas as pd
import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.signing import SignedPackage
from django_q.status import Stat, Status
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from werkzeug import Response

from integrity import models
from integrity.backfill import create_backfill_state
from integrity.models import Candle, DataAnomaly, Instrument
from integrity.providers import FetchRequest, ProviderError, get_provider

# The checkout's root: where manage.py is, the working directory of every child process a test starts.
ROOT = Path(__file__).resolve().parent.parent

# The Alpaca keys the local Alpaca server accepts (tests.conftest's ``alpaca_keys`` configures them).
ALPACA_KEY_ID, ALPACA_SECRET = "PKTESTKEYID0123456789", "sEcReT-0123456789-abcdefghijklmnopqrstuv"


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def add_instrument(symbol="BTC-USD", asset_class="crypto", calendar="24/7", timeframes=("1h",),
                   provider="synthetic", **provider_options) -> Instrument:
    return Instrument.objects.create(
        symbol=symbol, asset_class=asset_class, calendar=calendar, timeframes=list(timeframes),
        provider=provider, provider_options=provider_options,
    )


def stored_bars(symbol: str, timeframe: str) -> pd.DataFrame:
    rows = list(
        Candle.objects.filter(symbol=symbol, timeframe=timeframe)
        .order_by("ts", "id")
        .values_list("ts", "open", "high", "low", "close", "volume")
    )
    frame = pd.DataFrame(rows, columns=["ts", "open", "high", "low", "close", "volume"])
    if frame.empty:
        frame["ts"] = pd.Series(dtype="datetime64[ns, UTC]")
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).astype("datetime64[ns, UTC]")
    return frame.reset_index(drop=True)


def assert_same_bars(stored: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Exactly the provider's bars: same timestamps, same values, nothing lost, nothing doubled."""
    expected = expected.reset_index(drop=True)[["ts", "open", "high", "low", "close", "volume"]]
    assert len(stored) == len(expected), f"{len(stored)} stored vs {len(expected)} expected"
    assert stored["ts"].is_unique, "duplicate bars stored"
    pd.testing.assert_frame_equal(stored, expected, check_exact=True, check_dtype=False)


def record_http_sleeps(monkeypatch) -> list[float]:
    """Make the HTTP client record the sleeps it asks for instead of sleeping (jitter fixed at 0.5)."""
    from integrity.providers.http import HttpClient

    calls: list[float] = []
    monkeypatch.setattr(HttpClient, "sleep", staticmethod(calls.append))
    monkeypatch.setattr(HttpClient, "jitter", staticmethod(lambda: 0.5))
    return calls


def use_default_thresholds(settings) -> None:
    """Start from the built-in quality thresholds and staleness settings, whatever the environment
    configures."""
    from integrity.conf import conf
    from integrity.quality.thresholds import DEFAULT_THRESHOLDS

    settings.QUALITY_THRESHOLDS = {}
    settings.OUTLIER_MOVE_THRESHOLD = DEFAULT_THRESHOLDS["outlier_move"]
    for name in ("STALE_GRACE_MINUTES", "STALE_AVAILABILITY_DELAY_MINUTES", "SCHEDULE_BACKFILL_CRON"):
        setattr(settings, name, conf.default(name))


def worker_database_url() -> str:
    """DATABASE_URL for a worker process (manage.py backfill, qcluster) sharing this test's database.

    SQLite tests use a file (settings), so a separate process sees the same rows as on PostgreSQL.
    """
    from urllib.parse import quote

    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = quote(db["USER"] or "") + (f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else "")
    return f"postgres://{user}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def stop_process_group(process) -> None:
    """SIGTERM (a cluster stops its workers and exits), then SIGKILL for its group if it hangs; the
    process must have been started with ``start_new_session=True`` (its group is ours alone)."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def start_qcluster(log: Path, **env) -> subprocess.Popen:
    """``manage.py qcluster`` sharing this test's database, in its own session (its process group is
    ours alone: ``stop_process_group`` or ``os.killpg`` end all of it), output in ``log``; ``env`` on top
    of this environment (``REDIS_URL`` empty, the database broker, unless given)."""
    env = {**os.environ, "DATABASE_URL": worker_database_url(), "DJANGO_SETTINGS_MODULE": "marketdata_site.settings",
           "REDIS_URL": "", "Q_WORKERS": "1", "DJANGO_Q_LOG_LEVEL": "INFO", **env}
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "manage.py", "qcluster"], cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    process.log = log
    return process


def wait_for(condition, what: str, *processes, timeout: float = 60, every: float = 0.2) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` (with the tail of each process's log) when
    ``timeout`` passes first or one of the ``processes`` (started by ``start_qcluster``) exits."""
    def tails() -> str:
        return "\n".join(f"--- {p.log}:\n{p.log.read_text()[-3000:]}" for p in processes)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        for process in processes:
            assert process.poll() is None, f"qcluster exited early:\n{tails()}"
        time.sleep(every)
    pytest.fail(f"{what} within {timeout} s:\n{tails()}")


def django_script_report(script: str, tag: str, **env) -> dict:
    """Run ``script`` in a fresh Python process with the project's settings and ``env`` on top of this
    environment; return the JSON it printed on its last line starting with ``TAG ``."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "marketdata_site.settings", **env}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    lines = [line for line in done.stdout.splitlines() if line.startswith(f"{tag} ")]
    assert done.returncode == 0 and lines, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(lines[-1][len(tag) + 1:])


@contextmanager
def running_redis_server(directory: Path):
    """A private ``redis-server`` on a free loopback port (no persistence, files in ``directory``) for
    as long as the block runs: yields (port, client). Skips the test where redis-server is absent."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    import redis

    port = unused_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(directory)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail("redis-server did not start")
                time.sleep(0.05)
        yield port, client
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class TtyStringIO(StringIO):
    """A captured stream that says it is a terminal (where commands draw progress bars)."""

    def isatty(self) -> bool:
        return True


def unused_port() -> int:
    """A local TCP port nothing listens on (the socket that found it is closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def on_each_page(monkeypatch, callback) -> None:
    """Wrap every provider the backfill service gets: ``callback(i)`` runs as page ``i`` (from 0) is handed over."""
    from integrity.backfill import run as service

    real_get_provider = service.get_provider

    class Watched:
        def __init__(self, inner):
            self.inner = inner

        def fetch(self, request):
            for i, page in enumerate(self.inner.fetch(request)):
                callback(i)
                yield page

    monkeypatch.setattr(service, "get_provider", lambda name: Watched(real_get_provider(name)))


def refused_backfill(*args, match: str | None = None) -> CommandError:
    """``manage.py backfill ARGS`` that must be refused: its CommandError (message searched for ``match``)."""
    with pytest.raises(CommandError, match=match) as error:
        call_command("backfill", *args, stdout=StringIO(), stderr=StringIO())
    return error.value


def run_backfill_command(*args) -> tuple[int, str, str]:
    """``manage.py backfill ARGS`` in this process: (return code, stdout, stderr)."""
    out, err = StringIO(), StringIO()
    try:
        call_command("backfill", *args, stdout=out, stderr=err)
        code = 0
    except CommandError as exc:
        code = exc.returncode
    return code, out.getvalue(), err.getvalue()


def drain(httpserver, requests: int) -> None:
    """Wait until the server has answered ``requests`` requests: a request the client gave up on
    (timeout) is still queued at the single-threaded server and must not leak into the next test."""
    deadline = time.monotonic() + 5
    while len(httpserver.log) < requests and time.monotonic() < deadline:
        time.sleep(0.01)


class Hang:
    """A local-server handler that holds every request (at most 5 s) so that the client's read timeout
    fires, then answers ``body``. ``release`` lets the held requests go and waits until the server has
    answered ``requests`` of them (see ``drain``)."""

    def __init__(self, body: str = "[]"):
        self.body, self.released = body, threading.Event()

    def __call__(self, request) -> Response:
        self.released.wait(5)
        return Response(self.body, content_type="application/json")

    def release(self, httpserver, requests: int) -> None:
        self.released.set()
        drain(httpserver, requests)


class SlowFirst:
    """A local-server handler that holds the first request (at most 5 s: longer than the read timeout,
    so the client gives up on it and retries) and answers every request with ``handler``. The HTTP
    client's retry sleep releases the held request (``HttpClient.sleep`` is replaced, through
    ``monkeypatch``); leaving the ``with`` block releases it too, should the test fail first."""

    def __init__(self, handler, monkeypatch):
        from integrity.providers.http import HttpClient

        self.handler, self.released, self.held = handler, threading.Event(), False
        monkeypatch.setattr(HttpClient, "sleep", staticmethod(lambda seconds: self.released.set()))

    def __call__(self, request) -> Response:
        if not self.held:
            self.held = True
            self.released.wait(5)
        return self.handler(request)

    def __enter__(self) -> SlowFirst:
        return self

    def __exit__(self, *exc_info) -> None:
        self.released.set()


class ProviderFetch:
    """``fetch`` (the pages), ``fetched`` (one frame) and ``fetch_error`` of one provider, with a test
    file's defaults (symbol, timeframe, start, end, calendar, asset_class, options). Given the local
    server, ``base_url`` names it unless the call names another."""

    REQUEST_FIELDS = ("symbol", "timeframe", "start", "end", "calendar", "asset_class")

    def __init__(self, provider: str, **defaults):
        self.provider, self.defaults = provider, defaults

    def fetch(self, httpserver=None, /, **kwargs) -> list[pd.DataFrame]:
        options = {**self.defaults, **kwargs}
        fields = {name: options.pop(name) for name in self.REQUEST_FIELDS}
        if httpserver is not None:
            options.setdefault("base_url", httpserver.url_for(""))
        request = FetchRequest(fields["symbol"], fields["timeframe"], fields["start"], fields["end"],
                               calendar=fields["calendar"], asset_class=fields["asset_class"], options=options)
        return list(get_provider(self.provider).fetch(request))

    def fetched(self, *server, **kwargs) -> pd.DataFrame:
        return pd.concat(self.fetch(*server, **kwargs), ignore_index=True)

    def fetch_error(self, *server, **kwargs) -> ProviderError:
        with pytest.raises(ProviderError) as caught:
            self.fetch(*server, **kwargs)
        return caught.value


def make_anomaly(**kwargs) -> DataAnomaly:
    """A gap anomaly on BTC-USD 1h, open, with a fingerprint of its own; ``kwargs`` change any field."""
    values = {"symbol": "BTC-USD", "timeframe": "1h", "anomaly_type": "gap", "severity": "high",
              "description": "gap", "affected_rows": 3, "fingerprint": f"fp{DataAnomaly.objects.count()}"}
    values.update(kwargs)
    return DataAnomaly.objects.create(**values)


def n(model) -> int:
    return model.objects.count()


# One new row of each model per call (unique values where the model needs them).
FACTORIES = {
    "instrument": lambda: add_instrument(f"I{n(Instrument)}"),
    "candle": lambda: Candle.objects.create(symbol="BTC-USD", timeframe="1h", ts=utc(2024, 1, 1) + timedelta(
        hours=n(Candle)), open=1, high=2, low=0.5, close=1.5, volume=10, source="test"),
    "backfillstate": lambda: create_backfill_state(f"S{n(models.BackfillState)}", "1h", "crypto"),
    "dataanomaly": lambda: make_anomaly(),
    "duplicaterecordlog": lambda: models.DuplicateRecordLog.objects.create(
        symbol=f"S{n(models.DuplicateRecordLog)}", timeframe="1h", candle_time=utc(2024, 1, 1),
        duplicate_count=2, duplicate_ids=[1, 2]),
    "symbolfailuretracking": lambda: models.SymbolFailureTracking.objects.create(
        symbol=f"S{n(models.SymbolFailureTracking)}", consecutive_failures=1, last_failure_at=timezone.now()),
    "healthcheckrun": lambda: models.HealthCheckRun.objects.create(status="healthy", results={"stale_series": {}}),
    "rejectedcandle": lambda: models.RejectedCandle.objects.create(
        symbol="BTC-USD", timeframe="1h", ts=utc(2024, 1, 1) + timedelta(hours=n(models.RejectedCandle)),
        open=1, high=0.5, low=1, close=1, volume=1, raw_values={"open": 1, "high": 0.5, "low": 1, "close": 1,
                                                                "volume": 1},
        rules="high_below_low,high_below_open_close", execution_id=uuid.uuid4()),
    "seriesstats": lambda: models.SeriesStats.objects.create(
        symbol=f"S{n(models.SeriesStats)}", timeframe="1h", bar_count=1, last_scan_at=timezone.now()),
    # Ends far ahead: the admin tests move ``start`` (its date hierarchy) to several dates up to now.
    "instrumentclosure": lambda: models.InstrumentClosure.objects.create(
        symbol=f"S{n(models.InstrumentClosure)}", start=utc(2024, 12, 24, 22), end=utc(2099, 1, 1)),
}


def changelist(model: str) -> str:
    """The admin list of an ``integrity`` model (``model`` as in the URL name: "dataanomaly")."""
    return reverse(f"admin:integrity_{model}_changelist")


def act(client, model, action, ids, query=""):
    """Run an admin action on the rows ``ids`` of the list, filtered by ``query`` as the page was."""
    url = f"{changelist(model)}?{query}" if query else changelist(model)
    return client.post(url, {"action": action, "_selected_action": [str(i) for i in ids]}, follow=True)


def messages_of(response) -> list[str]:
    """The messages an admin page shows (after ``act``'s redirect)."""
    return [str(m) for m in response.context["messages"]]


def user_with(*codenames: str, name: str = "u") -> User:
    """A user holding exactly the ``integrity`` permissions named (no password: no slow hashing)."""
    user = User.objects.create_user(name)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames, content_type__app_label="integrity"))
    return User.objects.get(pk=user.pk)  # fresh permission cache


def staff_client(*codenames: str, name: str = "viewer"):
    """A Django test client logged in to the admin as a staff user holding exactly these
    ``integrity`` permissions."""
    from django.test import Client

    user = user_with(*codenames, name=name)
    user.is_staff = True
    user.save()
    client = Client()
    client.force_login(user)
    return client


def client_for(user: User | None, token: bool = False) -> APIClient:
    """An API client: anonymous, authenticated as ``user``, or sending ``user``'s token."""
    client = APIClient()
    if user is not None:
        if token:
            client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
        else:
            client.force_authenticate(user)
    return client


def post_instrument(client, **overrides):
    """Submit the admin's add-instrument form: a valid ETH-USD unless ``overrides`` change a field."""
    data = {"symbol": "ETH-USD", "asset_class": "crypto", "calendar": "24/7", "timeframes": ["1h"],
            "provider": "synthetic", "provider_options": "{}", "quality_thresholds": "{}", "active": "on"}
    data.update(overrides)
    return client.post(reverse("admin:integrity_instrument_add"), data)


def cluster_heartbeat(status=None, timeout: int = 60):
    """Save a django-q2 cluster heartbeat (a ``Status`` under the ``Stat`` key) where ``Stat.get_all``
    reads it, as a running ``qcluster`` does every guard cycle; ``status`` defaults to Idle."""
    beat = Status(pid=os.getpid(), cluster_id=uuid.uuid4())
    beat.status = Conf.IDLE if status is None else status
    beat.tob = timezone.now()
    beat.workers = [os.getpid()]
    get_broker().set_stat(Stat.get_key(beat.cluster_id), SignedPackage.dumps(beat, True), timeout)
    return beat
