"""How dates and times read on every page (admin lists, detail pages, templates' ``|date``).

Every instant the project stores and shows is UTC (``TIME_ZONE = "UTC"``), and says so: ISO-like
``2026-03-02 14:00 UTC``, never "March 2, 2026, 2 p.m." with no zone. ``T`` prints the active time
zone's abbreviation, so the label cannot lie if the zone ever changes.
"""

DATETIME_FORMAT = "Y-m-d H:i T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i T"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i"
