"""Anomaly fingerprints: one function, the identity an anomaly keeps across runs."""

from __future__ import annotations

import hashlib

from integrity.quality.findings import Finding, fingerprint


def test_a_findings_fingerprint_is_the_sha256_of_type_symbol_timeframe_and_key():
    finding = Finding(symbol="BTC-USD", timeframe="1h", anomaly_type="gap", severity="low", description="x",
                      affected_rows=1, key="2024-01-03T05:00:00+00:00")
    raw = "gap|BTC-USD|1h|2024-01-03T05:00:00+00:00"
    assert finding.fingerprint == hashlib.sha256(raw.encode()).hexdigest()


def test_bars_rejected_by_a_backfill_are_fingerprinted_by_their_execution():
    # The form anomaly rows written by earlier backfills carry: they must still match.
    found = fingerprint("invalid_ohlc", "AAPL", "1d", execution_id="abc-123")
    assert found == "invalid_ohlc:execution:abc-123"
