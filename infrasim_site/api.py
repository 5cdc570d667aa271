"""Shared API plumbing: the exception handler that maps service errors (and
Django's refusals of oversized request bodies) onto DRF's standard JSON error
bodies with the right 4xx status."""

from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.core.exceptions import ValidationError as DjangoValidationError
from django_otp_webauthn.exceptions import OTPWebAuthnApiError
from rest_framework import exceptions as drf_exceptions
from rest_framework import fields as drf_fields
from rest_framework import serializers as drf_serializers
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

    def paginate_queryset(self, queryset, request, view=None):
        """DRF's, minus the COUNT query when the page itself shows the total:
        a page that starts the list and is not full holds every row (most
        lists here: a person's tokens, passkeys, peers)."""
        self.request = request
        self.limit = self.get_limit(request)
        if self.limit is None:
            return None
        self.offset = self.get_offset(request)
        if self.offset == 0:
            rows = list(queryset[: self.limit])
            self.count = len(rows) if len(rows) < self.limit else self.get_count(queryset)
        else:
            # Counted first, as DRF does: an offset past the end never reaches
            # the database (a huge one is more than SQLite's OFFSET can hold).
            self.count = self.get_count(queryset)
            rows = [] if self.offset > self.count else list(queryset[self.offset : self.offset + self.limit])
        if self.count > self.limit and self.template is not None:
            self.display_page_controls = True
        return rows


class FastReadMixin:
    """A read path for ModelSerializers that serve long lists: the same
    fields and the same output, with the per-field lookup planned once per
    response instead of once per object and field (DRF's generic path was
    most of `GET mesh/peers`' cost; bench/api_load.py).

    Plain model columns are read with getattr, SerializerMethodFields call
    their method; anything else (relations, dotted or callable sources) takes
    DRF's own path, so the output never differs."""

    def _read_plan(self) -> list[tuple]:
        plan = self.__dict__.get("_fast_read_plan")
        if plan is None:
            columns = {f.attname for f in self.Meta.model._meta.concrete_fields if not f.is_relation}
            plan = []
            for field in self._readable_fields:
                if isinstance(field, drf_serializers.SerializerMethodField):
                    plan.append((field.field_name, None, field, "method"))
                elif len(field.source_attrs) == 1 and field.source_attrs[0] in columns:
                    plan.append((field.field_name, field.source_attrs[0], field, "column"))
                else:
                    plan.append((field.field_name, None, field, "generic"))
            self._fast_read_plan = plan
        return plan

    def to_representation(self, instance):
        ret = {}
        for name, column, field, kind in self._read_plan():
            if kind == "method":
                ret[name] = field.to_representation(instance)
                continue
            if kind == "column":
                value = getattr(instance, column)
            else:
                try:
                    value = field.get_attribute(instance)
                except drf_fields.SkipField:
                    continue
            ret[name] = None if value is None else field.to_representation(value)
        return ret
