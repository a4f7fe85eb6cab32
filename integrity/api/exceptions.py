"""The API's exception handler: every refusal is a JSON answer, never Django's HTML error page.

On top of DRF's handler: a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` is a JSON 413, other requests
Django refuses as malformed (too many form fields or files) a JSON 400, and unauthenticated requests
are counted by the throttles (``integrity.api.throttling``).
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import (
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from rest_framework import status
from rest_framework.exceptions import APIException, AuthenticationFailed, NotAuthenticated, ParseError
from rest_framework.views import exception_handler

from .throttling import count_refused_authentication


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "payload_too_large"

    def __init__(self):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        super().__init__(f"Request body too large: the limit is {limit} bytes (DATA_UPLOAD_MAX_MEMORY_SIZE).")


def api_exception_handler(exc, context):
    request, view = context.get("request"), context.get("view")
    if isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge()
    elif isinstance(exc, TooManyFieldsSent):
        exc = ParseError(f"Too many form fields: the limit is {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS} "
                         "(DATA_UPLOAD_MAX_NUMBER_FIELDS).")
    elif isinstance(exc, TooManyFilesSent):
        exc = ParseError(f"Too many files: the limit is {settings.DATA_UPLOAD_MAX_NUMBER_FILES} "
                         "(DATA_UPLOAD_MAX_NUMBER_FILES).")
    elif isinstance(exc, SuspiciousOperation):
        exc = ParseError("The request was refused as malformed.")
    elif isinstance(exc, (NotAuthenticated, AuthenticationFailed)) and request is not None:
        exc = count_refused_authentication(request, view, exc)
    return exception_handler(exc, context)
