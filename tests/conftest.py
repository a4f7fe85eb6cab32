"""Shared fixtures. Tests run against whichever database DATABASE_URL selects (SQLite by default)."""

from __future__ import annotations

import pytest
from django.conf import settings


def is_postgres() -> bool:
    return settings.DATABASES["default"]["ENGINE"].endswith("postgresql")


def pytest_collection_modifyitems(config, items):
    if is_postgres():
        return
    skip = pytest.mark.skip(reason="PostgreSQL-only mechanism; run with DATABASE_URL=postgres://…")
    for item in items:
        if "postgres_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _empty_cache():
    """The API throttles count requests in the cache: every test starts with nothing counted."""
    from django.core.cache import cache

    cache.clear()
