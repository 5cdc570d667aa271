"""Shared API plumbing: the exception handler that maps service errors (and
Django's refusals of oversized request bodies) onto DRF's standard JSON error
bodies with the right 4xx status."""

from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.core.exceptions import ValidationError as DjangoValidationError
from django_otp_webauthn.exceptions import OTPWebAuthnApiError
from rest_framework import exceptions as drf_exceptions
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.views import exception_handler as drf_exception_handler

from infrasim_site.errors import ServiceError
from infrasim_site.parsers import RequestTooLarge


class _ApiError(drf_exceptions.APIException):
    def __init__(self, status_code: int, detail):
        self.status_code = status_code
        super().__init__(detail=detail)


def api_exception_handler(exc, context):
    if isinstance(exc, ServiceError):
        exc = _ApiError(exc.status_code, exc.as_dict())
    elif isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages}
        exc = drf_exceptions.ValidationError(detail)
    elif isinstance(exc, RequestDataTooBig):
        exc = RequestTooLarge()
    elif isinstance(exc, (TooManyFieldsSent, TooManyFilesSent)):
        # Django's own refusals of oversized forms would otherwise reach the
        # client as its HTML 400 page.
        exc = drf_exceptions.ParseError(str(exc))
    elif isinstance(exc, OTPWebAuthnApiError):
        exc = _ApiError(exc.status_code, {"detail": str(exc.detail), "code": exc.code})
    response = drf_exception_handler(exc, context)
    # Every error body names its code, as ServiceError's do, so clients (and
    # the console's scripts) can tell e.g. "passkey_recheck_required" apart.
    if response is not None and isinstance(response.data, dict) and set(response.data) == {"detail"}:
        response.data["code"] = getattr(response.data["detail"], "code", None) or "error"
    return response


class Pagination(LimitOffsetPagination):
    """LimitOffsetPagination with a ceiling: an unbounded ?limit= reaches the
    database as a LIMIT it cannot represent (SQLite: "datatype mismatch", a 500)."""

    max_limit = 1000
