"""``?format=csv`` on a list endpoint: every row the filters (and ``?search=``, ``?ordering=``) select,
not a page, streamed in the table's layout from ``integrity.exports`` (the admin's export uses the same)."""

from __future__ import annotations

import json

from rest_framework import renderers
from rest_framework.settings import api_settings

from ..exports import Export


class CSVRenderer(renderers.BaseRenderer):
    """Names the ``csv`` format; the rows themselves are streamed by the view. Anything else rendered
    with it (an error) is written as JSON."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        if renderer_context and renderer_context.get("response") is not None:
            renderer_context["response"]["Content-Type"] = "application/json"
        return json.dumps(data).encode()


class CSVExportMixin:
    """A list view whose ``?format=csv`` streams ``csv_export`` of every filtered row."""

    csv_export: Export
    renderer_classes = [*api_settings.DEFAULT_RENDERER_CLASSES, CSVRenderer]

    def list(self, request, *args, **kwargs):
        if getattr(request.accepted_renderer, "format", None) != "csv":
            return super().list(request, *args, **kwargs)
        return self.csv_export.response(self.filter_queryset(self.get_queryset()))
