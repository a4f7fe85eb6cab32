"""Settings of the gunicorn that ``bench_api_list.py`` starts: the project's own, plus the floor view.

Only the URLconf differs (``floor_urls``: every project URL and ``/bench/floor/``), so the API list and
the floor are served by the same processes, middleware and database connection settings.
"""

from marketdata_site.settings import *  # noqa: F403

ROOT_URLCONF = "floor_urls"
