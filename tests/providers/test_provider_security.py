"""Issue 10, points 1 and 2: provider credentials go only where the operator pointed them, and one
redaction covers every path a provider reply can take.

1. Endpoints come from the settings (``BINANCE_BASE_URL``, ``ALPACA_DATA_BASE_URL``). An
   instrument's ``provider_options.base_url`` may keep the setting's host and port (another path),
   or point at a host the operator listed in ``PROVIDER_ALLOWED_HOSTS``; anything else is refused
   by the API and the admin (one validation path), and again at fetch time for options that reached
   the database another way. API keys travel only over https, except to a loopback host. A local
   capture server proves that no request is sent when a rule refuses.
2. A reply that echoes the Alpaca key headers, in every shape the provider can choke on, leaves
   them in none of: ``backfill_state_persistent.error_message``, ``symbol_failure_tracking.last_error``,
   the log records, the ``manage.py backfill`` output.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import subprocess
import sys
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.utils.html import escape
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from integrity.backfill import run_backfill
from integrity.models import BackfillState, Instrument, SymbolFailureTracking
from integrity.providers import (
    FetchRequest,
    ProviderConfigError,
    ProviderError,
    alpaca,
    binance,
    get_provider,
)
from integrity.providers.base import excerpt, redact
from integrity.providers.http import HttpClient
from integrity.providers.http_policy import HttpConfig, reset_rate_limiters
from integrity.providers.options import KEYS_RULE, resolve_base_url
from tests.helpers import ROOT, add_instrument, record_http_sleeps, utc
from tests.providers.test_provider_acceptance import admin_form, api_client

INSTRUMENTS = "/api/v1/instruments/"
ADMIN_ADD = "/admin/integrity/instrument/add/"
START, END = utc(2024, 1, 2), utc(2024, 1, 6)

# Quotes and a backslash: a reply may echo a key JSON-escaped (raw body) or repr-escaped (payload).
KEY_ID = "PKQ7ZXW3SECURITYKEY9"
SECRET = "wJ8r'Tq\"Zk\\3Lm/p+Vx=NdY7hF2sG5cB"

HOST_RULE = "or point at a host listed in PROVIDER_ALLOWED_HOSTS"

INSTRUMENT_FIELDS = {
    "alpaca": {"symbol": "AAPL", "asset_class": "equity", "calendar": "XNYS", "timeframes": ["1h"]},
    "binance": {"symbol": "BTC-USD", "asset_class": "crypto", "calendar": "24/7", "timeframes": ["1h"]},
}


@pytest.fixture(autouse=True)
def operator_settings(settings, monkeypatch):
    """The public endpoints, nothing else allowed, and keys configured, whatever the environment says."""
    settings.BINANCE_BASE_URL = "https://api.binance.com"
    settings.ALPACA_DATA_BASE_URL = "https://data.alpaca.markets"
    settings.PROVIDER_ALLOWED_HOSTS = []
    settings.ALPACA_API_KEY_ID = KEY_ID
    settings.ALPACA_API_SECRET_KEY = SECRET
    monkeypatch.delenv("ALPACA_API_KEY_ID", raising=False)
    monkeypatch.delenv("ALPACA_API_SECRET_KEY", raising=False)
    settings.PROVIDER_HTTP_CONNECT_TIMEOUT = 2
    settings.PROVIDER_HTTP_READ_TIMEOUT = 2
    settings.PROVIDER_HTTP_MAX_RETRIES = 1
    settings.ALPACA_MAX_REQUESTS_PER_SECOND = 0
    settings.BINANCE_MAX_REQUESTS_PER_SECOND = 0
    reset_rate_limiters()
    record_http_sleeps(monkeypatch)
    yield settings
    reset_rate_limiters()


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine that is not loopback, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # UDP: nothing is sent, this only picks the outgoing interface
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if ipaddress.ip_address(address).is_loopback else address


@pytest.fixture
def remote_capture():
    """A capture server reached through a non-loopback address of this machine: (server, URL)."""
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to reach a capture server through")
    server = HTTPServer(host="0.0.0.0", port=0)
    server.start()
    try:
        yield server, f"http://{address}:{server.port}"
    finally:
        server.clear()
        server.stop()


def origin(server: HTTPServer) -> str:
    return f"http://{server.host}:{server.port}"


def assert_no_secret(text: str, where: str) -> None:
    """Neither key, nor any 8 characters of one, appears in ``text``."""
    for secret in (KEY_ID, SECRET):
        leaked = sorted({secret[i:i + 8] for i in range(len(secret) - 7)} & {
            text[i:i + 8] for i in range(len(text) - 7)})
        assert not leaked, f"{where} holds part of a key: {leaked}\n{text}"


def logged(caplog) -> str:
    """Every log record of ours, formatted with its traceback (the fake provider's own access log,
    werkzeug's, is the provider's side and not ours)."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(formatter.format(r) for r in caplog.records
                     if not r.name.startswith(("werkzeug", "pytest_httpserver")))


# --- 1. endpoints come from the settings -----------------------------------------------------------


class TestTheEndpointRule:
    def test_an_option_on_the_settings_host_and_port_may_change_the_path(self):
        assert resolve_base_url({"base_url": "https://API.binance.com:443/proxy/"}, "BINANCE_BASE_URL",
                                binance.DEFAULT_BASE_URL, "binance") == "https://API.binance.com:443/proxy"

    @pytest.mark.parametrize("provider", ["alpaca", "binance"])
    def test_an_option_on_another_host_is_refused_naming_the_rule(self, provider):
        module = {"alpaca": alpaca, "binance": binance}[provider]
        with pytest.raises(ProviderConfigError) as caught:
            module.validate_options({"base_url": "https://collector.example.net"})
        message = str(caught.value)
        assert "base_url https://collector.example.net is not allowed: provider endpoints come from the " \
               "server's settings" in message
        assert HOST_RULE in message
        assert ("ALPACA_DATA_BASE_URL" if provider == "alpaca" else "BINANCE_BASE_URL") in message

    def test_another_port_of_the_settings_host_is_another_endpoint(self, settings):
        # Otherwise options could probe the ports of the configured host (connection refused or not).
        settings.BINANCE_BASE_URL = "http://127.0.0.1:8080"
        with pytest.raises(ProviderConfigError, match=HOST_RULE):
            binance.validate_options({"base_url": "http://127.0.0.1:22"})

    def test_a_host_listed_in_provider_allowed_hosts_may_be_named(self, settings):
        settings.PROVIDER_ALLOWED_HOSTS = ["md-proxy.internal", "10.0.0.5:8443"]
        binance.validate_options({"base_url": "http://md-proxy.internal:9000/binance"})
        binance.validate_options({"base_url": "https://10.0.0.5:8443"})
        with pytest.raises(ProviderConfigError, match=HOST_RULE):  # a port given in the entry is binding
            binance.validate_options({"base_url": "https://10.0.0.5:9443"})

    @pytest.mark.parametrize("url", ["https://api.binance.com@evil.example/", "https://user:pw@api.binance.com"])
    def test_user_info_is_refused(self, url):
        # It would hide the real host from a reader (the first URL goes to evil.example) or store a password.
        with pytest.raises(ProviderConfigError, match="base_url must not carry a user name or password"):
            binance.validate_options({"base_url": url})

    def test_an_unusable_allowed_hosts_entry_is_a_config_error_naming_the_setting(self, settings):
        settings.PROVIDER_ALLOWED_HOSTS = ["https://md-proxy.internal/path"]
        with pytest.raises(ProviderConfigError, match="setting PROVIDER_ALLOWED_HOSTS must list host names"):
            binance.validate_options({"base_url": "https://md-proxy.internal"})

    def test_the_setting_is_a_comma_separated_environment_variable_empty_by_default(self):
        code = "from django.conf import settings; print(settings.PROVIDER_ALLOWED_HOSTS)"
        env = {k: v for k, v in os.environ.items() if k != "PROVIDER_ALLOWED_HOSTS"}
        env["DJANGO_SETTINGS_MODULE"] = "marketdata_site.settings"

        def read(extra):
            done = subprocess.run([sys.executable, "-c", f"import django; django.setup(); {code}"], cwd=ROOT,
                                  env={**env, **extra}, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            return done.stdout.strip()

        assert read({}) == "[]"
        assert read({"PROVIDER_ALLOWED_HOSTS": "md-proxy.internal, 10.0.0.5:8443"}) == \
            "['md-proxy.internal', '10.0.0.5:8443']"


class TestKeysTravelOnlyOverHttps:
    def test_keys_are_refused_over_plain_http_to_an_allowed_remote_host(self, settings):
        settings.PROVIDER_ALLOWED_HOSTS = ["md-proxy.internal"]
        with pytest.raises(ProviderConfigError) as caught:
            alpaca.validate_options({"base_url": "http://md-proxy.internal"})
        assert str(caught.value) == (f"[alpaca] base_url http://md-proxy.internal would send the API keys over "
                                     f"plain http: {KEYS_RULE}")
        alpaca.validate_options({"base_url": "https://md-proxy.internal"})
        binance.validate_options({"base_url": "http://md-proxy.internal"})  # no keys: plain http is allowed

    @pytest.mark.parametrize("host", ["127.0.0.1", "127.10.20.30", "localhost", "[::1]", "[::ffff:127.0.0.1]"])
    def test_a_loopback_host_may_be_reached_over_plain_http(self, settings, host):
        settings.ALPACA_DATA_BASE_URL = f"http://{host}:8080"
        assert resolve_base_url({}, "ALPACA_DATA_BASE_URL", alpaca.DEFAULT_BASE_URL, "alpaca",
                                sends_keys=True) == f"http://{host}:8080"

    def test_a_setting_pointing_the_keys_at_plain_http_fails_the_fetch_before_any_request(self, settings,
                                                                                          remote_capture):
        server, url = remote_capture
        server.expect_request("/ping").respond_with_data("pong")
        with HttpClient("control", url, HttpConfig()) as client:  # no keys: the server is reachable
            assert client.get("/ping").text == "pong"
        settings.ALPACA_DATA_BASE_URL = url
        request = FetchRequest("AAPL", "1h", START, END, calendar="XNYS", asset_class="equity")
        with pytest.raises(ProviderConfigError) as caught:
            list(get_provider("alpaca").fetch(request))
        assert f"setting ALPACA_DATA_BASE_URL {url} would send the API keys over plain http" in str(caught.value)
        assert [r.path for r, _ in server.log] == ["/ping"]

    def test_the_http_client_itself_refuses_to_send_keys_over_plain_http(self, remote_capture):
        server, url = remote_capture
        with pytest.raises(ProviderConfigError, match="would send the API keys over plain http"):
            HttpClient("alpaca", url, HttpConfig(), headers={"APCA-API-KEY-ID": KEY_ID}, secrets=[KEY_ID])
        assert server.log == []


@pytest.mark.django_db
class TestTheApiAndTheAdminRefuse:
    def editor(self):
        # Not staff: may add and change instruments and request backfills, nothing more.
        return api_client("add_instrument", "change_instrument", "view_instrument", "change_backfillstate")

    @pytest.mark.parametrize("provider", ["alpaca", "binance"])
    def test_the_api_refuses_an_instrument_pointing_at_a_capture_server(self, httpserver, provider):
        response = self.editor().post(INSTRUMENTS, {
            **INSTRUMENT_FIELDS[provider], "provider": provider,
            "provider_options": {"base_url": httpserver.url_for("/")}}, format="json")
        assert response.status_code == 400
        [message] = response.json()["provider_options"]
        assert f"base_url {origin(httpserver)} is not allowed" in message and HOST_RULE in message
        assert not Instrument.objects.exists() and httpserver.log == []

    def test_the_api_refuses_the_option_on_an_update(self, httpserver):
        add_instrument("AAPL", asset_class="equity", calendar="XNYS", provider="alpaca", limit=500)
        response = self.editor().patch(f"{INSTRUMENTS}AAPL/", {
            "provider_options": {"base_url": httpserver.url_for("/"), "limit": 500}}, format="json")
        assert response.status_code == 400 and HOST_RULE in response.json()["provider_options"][0]
        assert Instrument.objects.get(symbol="AAPL").provider_options == {"limit": 500}
        assert httpserver.log == []

    def test_the_api_refuses_keys_over_plain_http_to_an_allowed_host(self, settings):
        settings.PROVIDER_ALLOWED_HOSTS = ["md-proxy.internal"]
        response = self.editor().post(INSTRUMENTS, {
            **INSTRUMENT_FIELDS["alpaca"], "provider": "alpaca",
            "provider_options": {"base_url": "http://md-proxy.internal"}}, format="json")
        assert response.status_code == 400 and KEYS_RULE in response.json()["provider_options"][0]
        assert not Instrument.objects.exists()

    def test_the_api_accepts_a_host_the_operator_allowed(self, httpserver, settings):
        settings.PROVIDER_ALLOWED_HOSTS = [httpserver.host]
        response = self.editor().post(INSTRUMENTS, {
            **INSTRUMENT_FIELDS["binance"], "provider": "binance",
            "provider_options": {"base_url": httpserver.url_for("/")}}, format="json")
        assert response.status_code == 201, response.content

    @pytest.mark.parametrize("provider", ["alpaca", "binance"])
    def test_the_admin_refuses_it_with_a_form_error(self, client, httpserver, provider):
        client.force_login(User.objects.create_superuser("root", "root@example.com", None))
        fields = INSTRUMENT_FIELDS[provider]
        response = client.post(ADMIN_ADD, admin_form(
            symbol=fields["symbol"], asset_class=fields["asset_class"], calendar=fields["calendar"],
            provider=provider, provider_options=json.dumps({"base_url": httpserver.url_for("/")})))
        assert response.status_code == 200  # the form again, with the error
        errors = str(response.context["adminform"].form.errors["provider_options"])
        assert escape(HOST_RULE) in errors
        assert not Instrument.objects.exists() and httpserver.log == []


@pytest.mark.django_db(transaction=True)
class TestOptionsThatBypassedValidation:
    """Options written to the database directly (a data migration, a shell, an old row) meet the same
    rule when a backfill resolves its endpoint: the run fails with the rule, nothing is sent."""

    @pytest.mark.parametrize("provider", ["alpaca", "binance"])
    def test_a_backfill_fails_with_the_rule_and_sends_nothing(self, httpserver, provider):
        fields = INSTRUMENT_FIELDS[provider]
        Instrument.objects.create(**fields, provider=provider, provider_options={"base_url": httpserver.url_for("/")})
        result = run_backfill(fields["symbol"], "1h", start=START, end=END)
        state = BackfillState.objects.get(execution_id=result.execution_id)
        assert state.status == "failed" and HOST_RULE in state.error_message
        assert state.error_message.startswith(f"[{provider}] base_url {origin(httpserver)} is not allowed")
        assert HOST_RULE in SymbolFailureTracking.objects.get(symbol=fields["symbol"]).last_error
        assert httpserver.log == []

    def test_the_backfill_command_exits_1_naming_the_rule_and_sends_nothing(self, httpserver):
        Instrument.objects.create(**INSTRUMENT_FIELDS["alpaca"], provider="alpaca",
                                  provider_options={"base_url": httpserver.url_for("/")})
        out, err = StringIO(), StringIO()
        with pytest.raises(CommandError) as exited:
            call_command("backfill", "--symbols", "AAPL", "--timeframe", "1h", "--start", "2024-01-02",
                         "--end", "2024-01-06", "--format", "json", stdout=out, stderr=err)
        assert exited.value.returncode == 1
        [row] = json.loads(out.getvalue())
        assert row["status"] == "failed" and HOST_RULE in row["error"]
        assert httpserver.log == []


# --- 2. one redaction ----------------------------------------------------------------------------


class TestTheRedaction:
    def test_it_removes_a_key_in_every_spelling_a_reply_may_echo_it_in(self):
        text = " ".join([SECRET, json.dumps({"k": SECRET}), repr({"k": SECRET}), repr([SECRET + "'"]),
                         repr(SECRET.encode()), json.dumps(KEY_ID)])
        redacted = redact(text)
        assert_no_secret(redacted, "the redacted text")
        assert redacted.count("***") == 6

    def test_extra_secrets_are_redacted_too(self):
        assert redact("token=abc123xyz", ["abc123xyz"]) == "token=***"

    def test_a_provider_error_is_redacted_whoever_builds_it(self):
        error = ProviderError(f"echo {SECRET}", provider="alpaca", body_excerpt=f"body {KEY_ID}")
        assert_no_secret(str(error), "the message")
        assert_no_secret(error.body_excerpt, "the body excerpt")
        assert str(error) == "[alpaca] echo *** body='body ***'"

    def test_an_excerpt_never_ends_in_part_of_a_key(self):
        # However the keys before it shrink under redaction, the cut never leaves a key's head.
        for n in range(60):
            text = excerpt((KEY_ID + " ") * n + (SECRET + " ") * 4)
            assert_no_secret(text, f"the excerpt after {n} key(s)")
            assert len(text) <= 200


def echoing(shape):
    """A fake Alpaca that echoes the key headers it received, in the reply ``shape`` builds, and in a
    response header (logged by the HTTP library at DEBUG)."""
    def handler(request: Request) -> Response:
        key, secret = request.headers["APCA-API-KEY-ID"], request.headers["APCA-API-SECRET-KEY"]
        status, body = shape(key, secret)
        return Response(body if isinstance(body, str) else json.dumps(body), status=status,
                        content_type="application/json", headers={"X-Echo": f"{key} {secret}"})
    return handler


OHLCV = {"o": 1.0, "h": 2.0, "l": 0.5, "c": 1.5, "v": 10}
ECHOING_REPLIES = {
    "no-bars-field": (lambda k, s: (200, {"message": "unexpected", "APCA-API-KEY-ID": k, "APCA-API-SECRET-KEY": s}),
                      "unexpected reply shape: no 'bars' field"),
    "not-an-object": (lambda k, s: (200, [k, s]), "expected a JSON object, got list"),
    "bar-not-an-object": (lambda k, s: (200, {"bars": [f"{k} {s}"]}), "bar 0 is str, expected an object"),
    "bar-missing-fields": (lambda k, s: (200, {"bars": [{"t": "2024-01-02T14:00:00Z", "k": k, "s": s}]}),
                           "bar 0 is missing o, h, l, c, v"),
    "unparseable-time": (lambda k, s: (200, {"bars": [{"t": k + s, **OHLCV}]}), "unparseable bar time '***"),
    "time-not-a-string": (lambda k, s: (200, {"bars": [{"t": [k, s], **OHLCV}]}), "'t' of bar 0 is ['***', '***']"),
    "page-token": (lambda k, s: (200, {"bars": [], "next_page_token": s}),
                   "next_page_token '***' was already followed"),
    "rejected": (lambda k, s: (422, {"message": f"bad key {k} / {s}"}),
                 "Alpaca rejected the request (HTTP 422): bad key *** / ***"),
    "forbidden": (lambda k, s: (403, {"message": f"forbidden: {k} {s}"}), "Alpaca refused the credentials"),
    "server-error": (lambda k, s: (503, f"upstream down for {k}:{s}"), "giving up after 2 attempt(s)"),
    "not-json": (lambda k, s: (200, f"<html>{(k + ' ') * 30}{s}</html>"), "malformed JSON in the reply"),
}


@pytest.mark.django_db(transaction=True)
class TestARepliesEchoingTheKeys:
    @pytest.fixture(autouse=True)
    def alpaca_at_the_local_server(self, settings, httpserver, caplog):
        settings.ALPACA_DATA_BASE_URL = httpserver.url_for("")  # operator-set, loopback: plain http is fine
        add_instrument("AAPL", asset_class="equity", calendar="XNYS", provider="alpaca")
        caplog.set_level(logging.DEBUG)

    @pytest.mark.parametrize("reply", ECHOING_REPLIES.values(), ids=ECHOING_REPLIES.keys())
    def test_a_backfill_keeps_them_out_of_the_row_the_tracking_and_the_log(self, httpserver, caplog, reply):
        shape, expected = reply
        httpserver.expect_request("/v2/stocks/AAPL/bars").respond_with_handler(echoing(shape))
        result = run_backfill("AAPL", "1h", start=START, end=END)
        state = BackfillState.objects.get(execution_id=result.execution_id)
        assert state.status == "failed" and expected in state.error_message, state.error_message
        assert len(httpserver.log) >= 1  # the keys were sent (loopback), and the reply echoed them
        assert_no_secret(state.error_message, "backfill_state_persistent.error_message")
        assert_no_secret(SymbolFailureTracking.objects.get(symbol="AAPL").last_error, "last_error")
        assert_no_secret(result.error, "the result")
        assert_no_secret(logged(caplog), "the log")

    @pytest.mark.parametrize("output_format", ["text", "json"])
    def test_the_backfill_command_keeps_them_out_of_its_output(self, httpserver, caplog, output_format):
        shape, expected = ECHOING_REPLIES["no-bars-field"]
        httpserver.expect_request("/v2/stocks/AAPL/bars").respond_with_handler(echoing(shape))
        out, err = StringIO(), StringIO()
        with pytest.raises(CommandError) as exited:
            call_command("backfill", "--symbols", "AAPL", "--timeframe", "1h", "--start", "2024-01-02",
                         "--end", "2024-01-06", "--format", output_format, stdout=out, stderr=err)
        assert exited.value.returncode == 1
        assert expected in out.getvalue() + err.getvalue()
        assert_no_secret(out.getvalue() + err.getvalue(), "the command output")
        state = BackfillState.objects.get(symbol="AAPL")
        assert expected in state.error_message
        assert_no_secret(state.error_message, "backfill_state_persistent.error_message")
        assert_no_secret(SymbolFailureTracking.objects.get(symbol="AAPL").last_error, "last_error")
        assert_no_secret(logged(caplog), "the log")


@pytest.mark.django_db
class TestCsvPathsStayInTheDataFolders:
    """An API user must not make the server read (and quote in an error) any file it can open."""

    def editor(self):
        return api_client("add_instrument", "change_instrument", "view_instrument")

    def create(self, **options):
        return self.editor().post(INSTRUMENTS, {"symbol": "AAPL", "asset_class": "equity", "calendar": "XNYS",
                                                "timeframes": ["1d"], "provider": "csv",
                                                "provider_options": options}, format="json")

    @pytest.mark.parametrize("options", [{"file": "/etc/passwd"}, {"directory": "/etc"}, {"file": "data/a.csv"}],
                             ids=["file", "directory", "relative"])
    def test_a_path_with_no_data_folder_configured_is_refused(self, options):
        response = self.create(**options)
        assert response.status_code == 400
        assert "CSV_DATA_DIRS" in response.json()["provider_options"][0] or "absolute" in str(response.json())
        assert not Instrument.objects.exists()

    def test_a_file_inside_a_data_folder_is_accepted(self, settings, tmp_path):
        settings.CSV_DATA_DIRS = [str(tmp_path)]
        assert self.create(file=str(tmp_path / "AAPL.csv")).status_code == 201

    def test_dot_dot_out_of_a_data_folder_is_refused(self, settings, tmp_path):
        settings.CSV_DATA_DIRS = [str(tmp_path / "data")]
        response = self.create(file=str(tmp_path / "data" / ".." / "secret.csv"))
        assert response.status_code == 400 and "outside the folders CSV_DATA_DIRS allows" in str(response.json())

    def test_a_symlink_out_of_a_data_folder_is_refused(self, settings, tmp_path):
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "link.csv").symlink_to("/etc/passwd")
        settings.CSV_DATA_DIRS = [str(tmp_path / "data")]
        assert self.create(file=str(tmp_path / "data" / "link.csv")).status_code == 400

    def test_an_unknown_csv_option_is_refused(self, settings, tmp_path):
        settings.CSV_DATA_DIRS = [str(tmp_path)]
        response = self.create(file=str(tmp_path / "a.csv"), filee="x")
        assert response.status_code == 400 and "unknown option(s) filee" in response.json()["provider_options"][0]

    def test_the_admin_refuses_it_with_a_form_error(self, client):
        client.force_login(User.objects.create_superuser("root", "root@example.com", None))
        response = client.post(ADMIN_ADD, admin_form(symbol="AAPL", asset_class="equity", calendar="XNYS",
                                                     provider="csv", provider_options='{"file": "/etc/passwd"}'))
        assert response.status_code == 200
        assert "CSV_DATA_DIRS" in str(response.context["adminform"].form.errors["provider_options"])
        assert not Instrument.objects.exists()
