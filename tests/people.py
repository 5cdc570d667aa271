"""Shared people for the suite (a pytest plugin, see tests/conftest.py):
alice and bob, signed-in browser sessions with one passkey each, an
operator (each a django.test.Client carrying its authenticator and ids),
and lighter factories without a passkey ceremony (`person`, `client_for`)."""

from __future__ import annotations

import pytest
from django.test import Client

from identity.handles import skeleton
from identity.models import Identity, User
from tests.passkey_api import authenticator, sign_up


def signed_in_person(display_name: str, *, operator: bool = False) -> Client:
    """A browser session of a new account, signed in with its first passkey.
    An operator is made one after sign-up, as `createoperator` would."""
    client, device = Client(), authenticator()
    body = sign_up(client, device, display_name)
    client.device = device
    client.passkey_id = body["passkey"]["id"]
    client.account_id = body["user"]["account_id"]
    client.user = User.objects.get(account_id=client.account_id)
    if operator:
        User.objects.filter(pk=client.user.pk).update(is_staff=True, is_superuser=True)
        client.user.refresh_from_db()
    return client


# Lighter people, without a passkey ceremony: an account with a claimed
# handle, and a session forced on it (reaches resources, never credentials).
BACKEND = "django_otp_webauthn.backends.WebAuthnBackend"


def person(handle: str, *, operator: bool = False) -> User:
    user = User.objects.create_user(
        display_name=handle.title(), signup_state="active", is_staff=operator, is_superuser=operator
    )
    Identity.objects.create(user=user, handle=handle, handle_skeleton=skeleton(handle), status="active")
    return user


def client_for(user) -> Client:
    client = Client()
    client.force_login(user, backend=BACKEND)
    return client


@pytest.fixture()
def alice(db):
    return signed_in_person("Alice")


@pytest.fixture()
def bob(db):
    return signed_in_person("Bob")


@pytest.fixture()
def operator(db):
    return signed_in_person("Olga Operator", operator=True)


@pytest.fixture()
def operator_client(db):
    """An operator's browser with a forced session: enough for the admin's
    pages and actions (secret exports need a passkey session: `operator`)."""
    operator = User.objects.create_user(display_name="Olga", is_staff=True, is_superuser=True, signup_state="active")
    return client_for(operator)
