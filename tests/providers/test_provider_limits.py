"""Provider limits shared through Redis (``integrity.providers.limits``): with ``REDIS_URL`` set the
request pace and Binance's weight budget are booked in one Redis, so every process (here: state
forgotten between bookings, as a separate process would have none) draws from the same budget; without
Redis, or with Redis unreachable, each process keeps its own and the fetch goes on.

Against a real ``redis-server`` the test starts (skipped where it is not installed)."""

from __future__ import annotations

import logging
import time

import pytest

from integrity.providers.http import HttpClient
from integrity.providers.http_policy import HttpConfig, reset_rate_limiters
from integrity.providers.limits import KEY_PREFIX, Pacer, WeightBudget, reset_shared_limits
from tests.helpers import unused_port


@pytest.fixture
def shared(fast_http, redis_server):
    """The limits are shared through the private redis-server: (settings, redis client)."""
    port, client = redis_server
    fast_http.PROVIDER_LIMITS_REDIS_URL = f"redis://127.0.0.1:{port}/0"
    return fast_http, client


def another_process() -> None:
    """What a second process starts with: no connection, no local pacing or weight counts."""
    reset_shared_limits()


def early_in_a_minute(client) -> None:
    """Wait (at most a few seconds) until the Redis clock is not about to start a new minute, so that
    consecutive bookings fall in one weight window."""
    while int(client.time()[0]) % 60 >= 57:
        time.sleep(0.2)


class TestSharedPace:
    def test_processes_book_slots_one_interval_apart_from_one_redis(self, shared):
        waits = []
        for _ in range(4):
            another_process()
            waits.append(Pacer("binance", "api.binance.com:443", 4.0).reserve())
        # 0, 0.25, 0.5, 0.75 s after the first booking, less the few ms the bookings themselves took.
        assert waits[0] == 0.0
        assert [round(w, 1) for w in waits[1:]] == pytest.approx([0.2, 0.5, 0.7], abs=0.1)
        assert waits == sorted(waits)

    def test_each_endpoint_has_its_own_pace(self, shared):
        assert Pacer("binance", "api.binance.com:443", 1.0).reserve() == 0.0
        assert Pacer("binance", "proxy.internal:8443", 1.0).reserve() == 0.0
        assert Pacer("binance", "api.binance.com:443", 1.0).reserve() > 0.5

    def test_the_keys_name_the_provider_and_endpoint_only(self, shared, httpserver):
        _, client = shared
        httpserver.expect_request("/x").respond_with_json({})
        url = httpserver.url_for("").replace("http://", "http://key:s3cr3t@")
        with HttpClient("alpaca", url, HttpConfig(max_requests_per_second=50), secrets=["s3cr3t"]) as http:
            http.get("/x")
        host, port = httpserver.host, httpserver.port
        assert [k.decode() for k in client.keys("*")] == [f"{KEY_PREFIX}:alpaca:{host}:{port}:pace"]

    def test_a_rate_of_zero_books_nothing(self, shared):
        _, client = shared
        assert Pacer("binance", "h:443", 0).reserve() == 0.0
        assert client.keys("*") == []


class TestSharedWeightBudget:
    def test_weight_is_counted_for_all_processes_in_the_current_minute(self, shared):
        _, client = shared
        early_in_a_minute(client)
        waits = []
        for _ in range(3):
            another_process()
            waits.append(WeightBudget("binance", "api.binance.com:443", 10).reserve(4))
        assert waits[:2] == [0.0, 0.0]
        assert 0 < waits[2] <= 60  # 4 + 4 + 4 > 10: the third waits for the next minute
        [key] = client.keys(f"{KEY_PREFIX}:binance:api.binance.com:443:weight:*")
        assert int(client.get(key)) == 8 and 0 < client.ttl(key) <= 120

    def test_a_request_heavier_than_the_budget_still_goes_alone_in_its_minute(self, shared):
        _, client = shared
        early_in_a_minute(client)
        budget = WeightBudget("binance", "h:443", 3)
        assert budget.reserve(5) == 0.0
        assert budget.reserve(1) > 0

    def test_take_sleeps_until_the_weight_fits(self, shared):
        _, client = shared
        early_in_a_minute(client)
        budget = WeightBudget("binance", "h:443", 2)
        slept = []
        assert budget.take(2, slept.append) == 0.0 and slept == []
        # The recorded sleep does not move the clock: after a few waits the request goes anyway.
        waited = budget.take(2, slept.append)
        assert len(slept) == 3 and waited == pytest.approx(sum(slept)) and 0 < slept[0] <= 60


class TestFallback:
    def test_without_redis_url_each_process_paces_itself(self, fast_http):
        fast_http.PROVIDER_LIMITS_REDIS_URL = ""
        assert Pacer("binance", "h:443", 2.0).reserve() == 0.0
        assert 0 < Pacer("binance", "h:443", 2.0).reserve() <= 0.5  # this process's limiter
        reset_rate_limiters()  # another process: its own limiter, nothing booked
        assert Pacer("binance", "h:443", 2.0).reserve() == 0.0

    def test_shared_limits_switched_off_keep_redis_out_of_it(self, shared):
        settings, client = shared
        settings.PROVIDER_LIMITS_REDIS_URL = "off"
        Pacer("binance", "h:443", 2.0).reserve()
        WeightBudget("binance", "h:443", 10).reserve(2)
        assert client.keys("*") == []

    def test_unreachable_redis_falls_back_to_per_process_limits_with_one_warning(self, fast_http, caplog):
        fast_http.PROVIDER_LIMITS_REDIS_URL = f"redis://127.0.0.1:{unused_port()}/0"
        with caplog.at_level(logging.WARNING, logger="integrity.providers.limits"):
            pacer = Pacer("binance", "h:443", 2.0)
            waits = [pacer.reserve() for _ in range(3)]
            budget = WeightBudget("binance", "h:443", 4)
            weights = [budget.reserve(2) for _ in range(3)]
        assert waits[0] == 0.0 and 0 < waits[1] < waits[2] <= 1.0  # paced locally
        assert weights[:2] == [0.0, 0.0] and weights[2] > 0  # budgeted locally
        warnings = [r.getMessage() for r in caplog.records if r.name == "integrity.providers.limits"]
        assert len(warnings) == 1 and "Redis is unreachable" in warnings[0]
        assert "127.0.0.1" not in warnings[0]  # the URL (it may hold a password) is not logged
