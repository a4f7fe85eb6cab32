"""Full detection sweep vs one bare window pass, and vs a pandas peer (PostgreSQL).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/marketdata_bench python bench/bench_detection.py \
        [--series 200] [--bars 10000]

Loads SERIES × BARS one-minute 24/7 bars (default 200 × 10,000 = 2M) with injected faults (gaps,
reverting spikes, stored invalid rows, duplicated rows), then times, best of N, in the same run:
- baseline: one window-function pass (lag/lead over the same rows, partitioned per series);
- ours: ``detect_data_anomalies(full=True, dry_run=True)`` — every detector, whole series;
- peer: the same rows via ``COPY … TO STDOUT`` into ``pandas.read_csv``, then vectorised checks
  (gaps by ts diff, 20 % moves, invalid OHLC, duplicates).
Targets: ours / window pass ≤ 2.0; peer / ours ≥ 2.0.
"""

from __future__ import annotations

import io
import sys

import common
from common import timer, truncate

RATIO_TARGET = 2.0
PEER_RATIO_TARGET = 2.0


def load(series: int, bars: int) -> None:
    import numpy as np
    import pandas as pd
    from django.db import connection
    from django.utils import timezone

    from integrity.models import Instrument
    from integrity.providers.synthetic import synthetic_bars

    truncate()
    Instrument.objects.all().delete()
    start = pd.Timestamp("2024-01-01", tz="UTC")
    end = start + pd.Timedelta(minutes=bars)
    now = timezone.now().isoformat()
    rng = np.random.default_rng(7)
    Instrument.objects.bulk_create(
        [Instrument(symbol=f"S{i:04d}", asset_class="crypto", calendar="24/7", timeframes=["1m"],
                    provider="synthetic") for i in range(series)]
    )
    for i in range(series):
        symbol = f"S{i:04d}"
        spikes = [(start + pd.Timedelta(minutes=int(m))).isoformat() for m in rng.integers(10, bars - 10, 2)]
        gap_at = start + pd.Timedelta(minutes=int(rng.integers(100, bars - 100)))
        frame = synthetic_bars(symbol, "1m", "24/7", start.to_pydatetime(), end.to_pydatetime(), seed=i,
                               spikes=spikes, gaps=[[gap_at.isoformat(), (gap_at + pd.Timedelta(minutes=5)).isoformat()]])
        # A stored invalid row and a duplicated row per series (legacy writers do this).
        bad = int(rng.integers(1, len(frame) - 1))
        frame.loc[bad, "low"] = frame.loc[bad, "high"] * 1.01
        frame = pd.concat([frame, frame.iloc[[int(rng.integers(0, len(frame)))]]], ignore_index=True)
        out = pd.DataFrame({"symbol": symbol, "timeframe": "1m",
                            "ts": frame["ts"].dt.strftime("%Y-%m-%d %H:%M:%S+00"),
                            "open": frame["open"], "high": frame["high"], "low": frame["low"],
                            "close": frame["close"], "volume": frame["volume"], "source": "bench",
                            "ingested_at": now, "updated_at": now})
        buf = out.to_csv(sep="\t", header=False, index=False)
        with connection.cursor() as cursor:
            with cursor.cursor.copy("COPY candles (symbol, timeframe, ts, open, high, low, close, volume, source, "
                                    "ingested_at, updated_at) FROM STDIN") as copy:
                copy.write(buf)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE candles")


WINDOW_PASS = """
SELECT count(*) FILTER (WHERE gap > interval '1 minute'), count(*) FILTER (WHERE abs(ret) > 0.2),
       count(*) FILTER (WHERE nxt IS NULL)
  FROM (SELECT ts - lag(ts) OVER w AS gap, close / lag(close) OVER w - 1 AS ret, lead(close) OVER w AS nxt
          FROM candles WINDOW w AS (PARTITION BY symbol, timeframe ORDER BY ts)) x
"""


def window_pass() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(WINDOW_PASS)
        cursor.fetchall()


def ours() -> int:
    from integrity.quality.anomalies import detect_data_anomalies

    return len(detect_data_anomalies(full=True, dry_run=True).findings)


def pandas_peer() -> int:
    import pandas as pd
    from django.db import connection

    buf = io.BytesIO()
    with connection.cursor() as cursor:
        with cursor.cursor.copy("COPY (SELECT symbol, timeframe, ts, open, high, low, close, volume FROM candles "
                                "ORDER BY symbol, timeframe, ts) TO STDOUT WITH CSV") as copy:
            for chunk in copy:
                buf.write(chunk)
    buf.seek(0)
    df = pd.read_csv(buf, names=["symbol", "timeframe", "ts", "open", "high", "low", "close", "volume"])
    df["ts"] = pd.to_datetime(df["ts"], utc=True, format="ISO8601")
    same = df["symbol"].eq(df["symbol"].shift()) & df["timeframe"].eq(df["timeframe"].shift())
    gaps = same & (df["ts"].diff() > pd.Timedelta(minutes=1))
    moves = same & ((df["close"] / df["close"].shift() - 1).abs() > 0.2)
    invalid = (df["high"] < df["low"]) | (df["high"] < df[["open", "close"]].max(axis=1)) | \
        (df["low"] > df[["open", "close"]].min(axis=1)) | (df[["open", "high", "low", "close"]] <= 0).any(axis=1)
    dups = df.duplicated(["symbol", "timeframe", "ts"], keep=False)
    return int(gaps.sum() + moves.sum() + invalid.sum() + dups.sum())


def best_of(fn, n: int) -> tuple[float, object]:
    best, value = float("inf"), None
    for _ in range(n):
        with timer() as t:
            value = fn()
        best = min(best, t["seconds"])
    return best, value


def add_arguments(parser) -> None:
    parser.add_argument("--series", type=int, default=200)
    parser.add_argument("--bars", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)


def check(args) -> str | None:
    if args.series < 1 or args.bars < 2 or args.repeat < 1:
        return "--series and --repeat must be at least 1, --bars at least 2"
    return None


def run(args, report: dict) -> None:
    print(f"loading {args.series} series × {args.bars} 1m bars …", flush=True)
    with timer() as t:
        load(args.series, args.bars)
    print(f"  loaded in {t['seconds']:.1f}s")
    window_pass()  # warm the cache for everyone
    base, _ = best_of(window_pass, args.repeat)
    mine, findings = best_of(ours, args.repeat)
    peer, peer_hits = best_of(pandas_peer, max(1, args.repeat - 1))
    rows = args.series * (args.bars + 1)
    print(f"rows: {rows:,}")
    print(f"one window pass (lag/lead):         {base:7.3f}s")
    print(f"detect_data_anomalies(full=True):   {mine:7.3f}s  ({findings} findings)")
    print(f"pandas peer (COPY → read_csv → np): {peer:7.3f}s  ({peer_hits} raw hits)")
    print(f"ratio detection / window pass = {mine / base:.2f} (target <= {RATIO_TARGET})")
    print(f"ratio pandas peer / detection = {peer / mine:.2f} (target >= {PEER_RATIO_TARGET})")
    print(f"ratio pandas peer / window pass = {peer / base:.2f}")
    report.update(series=args.series, bars=args.bars, rows=rows, window_pass_seconds=round(base, 3),
                  detection_seconds=round(mine, 3), pandas_peer_seconds=round(peer, 3), findings=findings,
                  ratio_detection_window=round(mine / base, 3), ratio_peer_detection=round(peer / mine, 3),
                  ratio_target=RATIO_TARGET, peer_ratio_target=PEER_RATIO_TARGET)


def summary(args, report: dict) -> list[dict]:
    return [common.summary_row(
        f"`bench_detection.py`, {report['series']:,} × {report['bars']:,} bars",
        f"detection / window pass = {report['ratio_detection_window']:.2f}; "
        f"pandas peer / detection = {report['ratio_peer_detection']:.2f}",
        f"≤ {report['ratio_target']}; ≥ {report['peer_ratio_target']}")]


def main(argv=None) -> int:
    return common.main("detection", __doc__, add_arguments, run, argv, check=check, summary=summary)


if __name__ == "__main__":
    sys.exit(main())
