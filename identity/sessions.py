"""Sessions: a database store that keeps only a hash of each session key and
records who signed in with which passkey, and the rule for "recently checked
with a passkey" (GitHub's sudo mode) that guards the most sensitive actions.

Views own sessions; services get plain values from here (user, passkey id,
session key) and never see a request.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import login
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.utils import timezone

PASSKEY_KEY = "infrasim.passkey_id"
CHECKED_AT_KEY = "infrasim.passkey_checked_at"


def stored_key(session_key: str) -> str:
    return hashlib.sha256(session_key.encode()).hexdigest()


class SessionStore(DatabaseSessionStore):
    """Django's database store, keyed by SHA-256 of the cookie value. Every
    method that reaches the table by key is translated here; the rest of
    Django's store (expiry, cycle_key, flush) works on the cookie value."""

    @classmethod
    def get_model_class(cls):
        from identity.models import UserSession

        return UserSession

    def _by_key(self, session_key):
        return self.model.objects.filter(session_key=stored_key(session_key))

    def _get_session_from_db(self):
        row = self._by_key(self.session_key).filter(expire_date__gt=timezone.now()).first() if self.session_key else None
        if row is None:
            self._session_key = None
        return row

    async def _aget_session_from_db(self):
        row = await self._by_key(self.session_key).filter(expire_date__gt=timezone.now()).afirst() if self.session_key else None
        if row is None:
            self._session_key = None
        return row

    def exists(self, session_key):
        return self._by_key(session_key).exists()

    async def aexists(self, session_key):
        return await self._by_key(session_key).aexists()

    def create_model_instance(self, data):
        instance = super().create_model_instance(data)
        return self._describe(instance, data)

    async def acreate_model_instance(self, data):
        instance = await super().acreate_model_instance(data)
        return self._describe(instance, data)

    def _describe(self, instance, data):
        instance.session_key = stored_key(instance.session_key)
        instance.user_id = data.get("_auth_user_id")
        instance.passkey_id = data.get(PASSKEY_KEY)
        return instance

    def delete(self, session_key=None):
        session_key = session_key or self.session_key
        if session_key is not None:
            self._by_key(session_key).delete()

    async def adelete(self, session_key=None):
        session_key = session_key or self.session_key
        if session_key is not None:
            await self._by_key(session_key).adelete()


# --- The passkey a session was signed in with, and when it was last checked -------


def mark_passkey_checked(session, passkey_id: int) -> None:
    session[PASSKEY_KEY] = passkey_id
    session[CHECKED_AT_KEY] = time.time()


def passkey_checked_recently(session) -> bool:
    """True when this session proved possession of a passkey within
    PASSKEY_RECHECK_SECONDS (10 minutes by default)."""
    checked_at = session.get(CHECKED_AT_KEY)
    return isinstance(checked_at, (int, float)) and time.time() - checked_at < settings.PASSKEY_RECHECK_SECONDS


def signed_in_with_passkey(session) -> bool:
    return isinstance(session.get(PASSKEY_KEY), int)


def start_session(request, user, passkey) -> None:
    """Sign `user` in on this request's session, as proven by `passkey`."""
    login(request, user, backend="django_otp_webauthn.backends.WebAuthnBackend")
    # Which passkey signed this session in, and when it was last proven: the
    # credential rules read these (django-otp's second-factor bookkeeping,
    # and the query per request of its middleware, are not needed).
    mark_passkey_checked(request.session, passkey.pk)
    # A fixed 24 h from sign-in: an absolute time, because a number of seconds
    # would be counted again from every later write to the session.
    request.session.set_expiry(timezone.now() + timedelta(seconds=settings.SESSION_COOKIE_AGE))


def take(session, key: str):
    """Pop a ceremony's pending state and save at once, so a failed or
    replayed answer finds no challenge left to match."""
    value = session.pop(key, None)
    session.save()
    return value


@dataclass(frozen=True)
class Proof:
    """How a request proved who sent it, as services need to know it: with
    an API token (its scope), or with a session (when its passkey was last
    checked). Views build it (proof_of); services decide with it."""

    token_scope: str | None = None
    passkey_checked_at: float | None = None


def proof_of(request) -> Proof:
    from identity.models import ApiToken

    auth = getattr(request, "auth", None)
    if isinstance(auth, ApiToken):
        return Proof(token_scope=auth.scope)
    checked_at = request.session.get(CHECKED_AT_KEY) if hasattr(request, "session") else None
    return Proof(passkey_checked_at=checked_at if isinstance(checked_at, (int, float)) else None)
