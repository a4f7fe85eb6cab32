"""What the API accepts as input, checked once for every view (see REST_FRAMEWORK in settings).

Text that no database column can store is refused up front with a 400 naming where it is, instead
of reaching the database: PostgreSQL rejects the NUL character (``\\u0000``) in text and JSON (a
``DataError`` that would be a 500, and only on PostgreSQL), and neither database can encode a lone
surrogate (``\\ud800``). The JSON parser also refuses documents nested deeper than ``MAX_JSON_DEPTH``
(the standard parser would hit Python's recursion limit: a 500). Bodies over
``DATA_UPLOAD_MAX_MEMORY_SIZE`` are a 413 (``integrity.api.exceptions``).
"""

from __future__ import annotations

import json
from typing import Any

from django.http import QueryDict
from django_filters.rest_framework import DjangoFilterBackend
from rest_framework import parsers
from rest_framework.exceptions import NotFound, ParseError, ValidationError

# Our bodies are flat or one object deep (provider_options, quality_thresholds): 32 is generous.
MAX_JSON_DEPTH = 32


def unstorable_reason(text: str) -> str | None:
    """Why no database column can store ``text`` (None when it can)."""
    if "\x00" in text:
        return "text may not contain the NUL character (\\u0000)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "text must be valid Unicode (a lone surrogate such as \\ud800 is not)"
    return None


def _child(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    shown = key if key.isidentifier() else json.dumps(key)
    return f"{path}.{shown}" if path else shown


def check_storable(data: Any, what: str = "request body") -> None:
    """Raise ``ParseError`` naming the first key or string in ``data`` that cannot be stored, or the
    place where it nests deeper than ``MAX_JSON_DEPTH``. Iterative: the depth costs no stack."""
    stack: list[tuple[str, Any, int]] = [("", data, 0)]
    while stack:
        path, value, depth = stack.pop()
        if isinstance(value, str):
            reason = unstorable_reason(value)
            if reason:
                raise ParseError(f"{what}: {path or 'the value'}: {reason}")
        elif isinstance(value, (dict, list)):
            if depth >= MAX_JSON_DEPTH:
                raise ParseError(f"{what}: {path or 'the document'} nests deeper than {MAX_JSON_DEPTH} levels")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    reason = unstorable_reason(key)
                    if reason:
                        raise ParseError(f"{what}: a key in {path or 'the top-level object'} "
                                         f"({json.dumps(key)}): {reason}")
                stack.append((_child(path, key), item, depth + 1))


def _check_form(data: QueryDict, what: str) -> None:
    check_storable({key: values[0] if len(values) == 1 else values for key, values in data.lists()}, what)


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            # The C decoder counts its own nesting against the recursion limit (~1000 levels).
            raise ParseError(f"JSON parse error - the document nests deeper than {MAX_JSON_DEPTH} levels") from None
        check_storable(data)
        return data


class FormParser(parsers.FormParser):
    def parse(self, stream, media_type=None, parser_context=None):
        data = super().parse(stream, media_type, parser_context)
        _check_form(data, "request body")
        return data


class MultiPartParser(parsers.MultiPartParser):
    def parse(self, stream, media_type=None, parser_context=None):
        parsed = super().parse(stream, media_type, parser_context)
        _check_form(parsed.data, "request body")
        return parsed


class StorableQueryFilterBackend(DjangoFilterBackend):
    """django-filter, after refusing query parameters no column can store (400 naming the parameter)
    and URL lookups that no row can match (404). Every list and every detail lookup
    (``get_object`` filters its queryset first) passes here."""

    def filter_queryset(self, request, queryset, view):
        for name, values in request.query_params.lists():
            for text in (name, *values):
                reason = unstorable_reason(text)
                if reason:
                    key = "query" if unstorable_reason(name) else name
                    raise ValidationError({key: [f"query parameter {json.dumps(name)}: {reason}"]})
        for value in view.kwargs.values():
            if isinstance(value, str) and unstorable_reason(value):
                raise NotFound(f"no such object: the URL holds text no object can have ({unstorable_reason(value)})")
        filterset_class = self.get_filterset_class(view, queryset)
        if filterset_class is not None and not self.names_a_filter(request, filterset_class):
            # No parameter of the filter set given: nothing to filter or to refuse. Building the
            # filter set and its form per request cost more than the whole page's query.
            return queryset
        return super().filter_queryset(request, queryset, view)

    @staticmethod
    def names_a_filter(request, filterset_class) -> bool:
        """Whether a query parameter is (or starts with, as ``x_min``/``x_after`` widgets' do) the name
        of one of the set's filters."""
        names = tuple(filterset_class.base_filters)
        return any(param.startswith(names) for param in request.query_params)
