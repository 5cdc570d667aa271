"""Shared people for the suite (a pytest plugin, see tests/conftest.py):
alice and bob, signed-in browser sessions with one passkey each, and an
operator. Each is a django.test.Client carrying its authenticator and ids."""

from __future__ import annotations

import pytest
from django.test import Client

from identity.models import User
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


@pytest.fixture()
def alice(db):
    return signed_in_person("Alice")


@pytest.fixture()
def bob(db):
    return signed_in_person("Bob")


@pytest.fixture()
def operator(db):
    return signed_in_person("Olga Operator", operator=True)
