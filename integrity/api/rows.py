"""A read-only serializer's output, computed from ``.values()`` rows: the fast path of the big lists.

A ``ModelSerializer`` with ``many=True`` builds a model instance per row, deep-copies its fields per
request and walks every field of every row through ``get_attribute`` and ``to_representation``: for
the anomaly list's 100-row page that was most of the request's time (the query itself is a fraction
of a millisecond). ``represent_rows(serializer_class, rows)`` gives the same JSON-ready dicts from
the plain dicts of ``queryset.values(...)``: the serializer stays the one statement of the row's
shape (and the OpenAPI schema's), only the per-value work is done once per field kind.

Exact for the plain model fields a list shows: text, choices, integers and booleans come out of the
database already as their representation; timezone-aware date-times become ISO 8601 in the current
time zone (``Z`` for UTC) exactly as ``DateTimeField`` writes them; any other field (or value) goes
through the field's own ``to_representation``. tests/review/test_api_rows.py compares the two.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from functools import cache
from typing import Any

from django.conf import settings
from django.utils import timezone
from rest_framework import fields as drf
from rest_framework import serializers
from rest_framework.settings import api_settings

DATETIME = "datetime"  # the fast kind of a plain ISO DateTimeField

# Field classes whose representation of a database value of the matching type is the value itself.
_IDENTITY: dict[type, tuple[type, ...]] = {
    drf.CharField: (str,),
    drf.ChoiceField: (str,),
    drf.IntegerField: (int,),
    drf.BooleanField: (bool,),
}


def _plain_iso_datetime(field: drf.Field) -> bool:
    """A ``DateTimeField`` with the default ISO output and the current time zone."""
    return (type(field) is drf.DateTimeField and not hasattr(field, "timezone")
            and str(getattr(field, "format", api_settings.DATETIME_FORMAT)).lower() == drf.ISO_8601)


@cache
def _plan(serializer_class: type[serializers.Serializer]) -> tuple[tuple[str, str, Any, drf.Field], ...]:
    """(output name, source key, fast kind, field) per readable field. The fast kind: a tuple of the
    types a value is its own representation of, ``DATETIME``, or ``()``: the field does the work."""
    plan = []
    for name, field in serializer_class().fields.items():
        if field.write_only:
            continue
        source = field.source if field.source not in (None, "*") else name
        if "." in source or source == "*":
            raise ValueError(f"{serializer_class.__name__}.{name}: only plain model fields come from .values()")
        kind: Any = DATETIME if _plain_iso_datetime(field) else _IDENTITY.get(type(field), ())
        plan.append((name, source, kind, field))
    return tuple(plan)


def value_columns(serializer_class: type[serializers.Serializer]) -> list[str]:
    """The ``.values()`` columns ``represent_rows`` reads for ``serializer_class``."""
    return [source for _, source, _, _ in _plan(serializer_class)]


def represent_rows(serializer_class: type[serializers.Serializer], rows: Iterable[dict]) -> list[dict]:
    """``serializer_class(instances, many=True).data`` of the rows ``.values(*value_columns(...))`` gave."""
    plan = _plan(serializer_class)
    tz = timezone.get_current_timezone() if settings.USE_TZ else None  # without USE_TZ: the field's way
    return [{name: _convert(row[source], kind, field, tz) for name, source, kind, field in plan} for row in rows]


def _convert(value: Any, kind: Any, field: drf.Field, tz) -> Any:
    if value is None:
        return None
    if kind is DATETIME:
        if tz is not None and isinstance(value, datetime) and value.tzinfo is not None:
            text = value.astimezone(tz).isoformat()
            return text[:-6] + "Z" if text.endswith("+00:00") else text
    elif type(value) in kind:
        return value
    return field.to_representation(value)
