"""Errors services raise. Services raise ServiceError subclasses (or Django's
ValidationError from full_clean); infrasim_site.api turns them into DRF's
standard JSON, and views, admin and tasks never build error responses by hand.
"""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 400
    default_code = "invalid"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.code = code or self.default_code

    def as_dict(self) -> dict:
        if self.field:
            return {self.field: [self.message], "code": self.code}
        return {"detail": self.message, "code": self.code}


class InvalidInput(ServiceError):
    status_code = 400


class PermissionDenied(ServiceError):
    status_code = 403
    default_code = "permission_denied"


class NotFound(ServiceError):
    status_code = 404
    default_code = "not_found"


class Conflict(ServiceError):
    status_code = 409
    default_code = "conflict"
