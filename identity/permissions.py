"""Who may call an API view, beyond "signed in".

- A bearer token acts within its scope: `read` allows safe methods only,
  `write` allows changes to resources. No scope reaches credentials.
- Credentials (passkeys, tokens, passkey ceremonies) are managed only from a
  browser session that was signed in with a passkey, and the most sensitive
  changes need a passkey check within the last 10 minutes (sudo mode).
"""

from __future__ import annotations

from rest_framework import exceptions, permissions

from identity.models import ApiToken
from identity.sessions import passkey_checked_recently, signed_in_with_passkey


class RecheckRequired(exceptions.PermissionDenied):
    default_detail = "Confirm with your passkey first: this needs a passkey check within the last 10 minutes."
    default_code = "passkey_recheck_required"


def uses_token(request) -> bool:
    return isinstance(request.auth, ApiToken)


class TokenScope(permissions.BasePermission):
    """The default for every API view: a read-only token may only read."""

    message = "This token is read-only: create a read-write token to make changes."

    def has_permission(self, request, view):
        if not uses_token(request) or request.method in permissions.SAFE_METHODS:
            return True
        return request.auth.scope == ApiToken.Scope.WRITE


class NoTokens(permissions.BasePermission):
    """Credential endpoints: an API token, whatever its scope, is refused."""

    message = "API tokens cannot manage credentials: use the console, signed in with a passkey."

    def has_permission(self, request, view):
        return not uses_token(request)


class PasskeySession(NoTokens):
    """A browser session signed in with a passkey. The view's
    `recent_passkey_actions` (viewset actions or lower-case HTTP methods) also
    need a passkey check within PASSKEY_RECHECK_SECONDS."""

    def has_permission(self, request, view):
        if not super().has_permission(request, view):
            return False
        if not (request.user.is_authenticated and signed_in_with_passkey(request.session)):
            self.message = "Sign in with a passkey to manage credentials."
            return False
        action = getattr(view, "action", None) or request.method.lower()
        if action in getattr(view, "recent_passkey_actions", ()) and not passkey_checked_recently(request.session):
            raise RecheckRequired()
        return True
