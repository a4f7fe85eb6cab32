"""Server-rendered SVG charts (no JavaScript, no CDN), for the admin's review screens.

* ``anomaly``: the candles around an anomaly, its period shaded (an ``invalid_ohlc`` finding: the
  window of the bars it quarantined, refused bars as crosses);
* ``series``: a series' recent candles and its coverage calendar (the share of expected bars stored,
  per UTC day), for the per-series page;
* ``axis``: where bars go — session-compressed for series with a trading calendar, linear for 24/7;
* ``ticks``: 1-2-5 price ticks and UTC time ticks; ``svg``: the price chart's markup;
  ``data``: the few indexed queries the charts make.
"""

from .anomaly import anomaly_chart_svg

__all__ = ["anomaly_chart_svg"]
