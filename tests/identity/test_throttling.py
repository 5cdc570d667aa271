"""Rate limits on Redis: per client address and per account, 429 with
Retry-After, and nothing created by the requests that were refused."""

from __future__ import annotations

import itertools

import pytest
from django.core.cache import cache
from django.test import Client

from identity.models import ApiToken, User
from tests.passkey_api import API, authenticator, post_json

pytestmark = pytest.mark.django_db

_addresses = (f"198.51.100.{n}" for n in itertools.count(1))


@pytest.fixture()
def address():
    """A client address of its own, so counts from other tests never mix in."""
    return next(_addresses)


@pytest.fixture()
def rates(settings):
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES}
    return settings.THROTTLE_RATES


def test_sign_up_options_are_limited_per_address_and_create_no_accounts(rates, address):
    rates["signup"] = "3/hour"
    client = Client(REMOTE_ADDR=address)
    answers = [post_json(client, f"{API}/auth/register/options", {"display_name": f"Bot {n}"}) for n in range(5)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
    refused = answers[-1]
    assert refused["Content-Type"].startswith("application/json")
    assert 0 < int(refused["Retry-After"]) <= 3600
    assert "throttled" in refused.json()["detail"]
    assert User.objects.count() == 0
    # Another address is not affected.
    assert post_json(Client(REMOTE_ADDR=next(_addresses)), f"{API}/auth/register/options", {"display_name": "Ok"}).status_code == 200


def test_a_forged_forwarded_for_header_does_not_escape_the_limit(rates, address):
    rates["login"] = "2/min"
    codes = [
        post_json(Client(REMOTE_ADDR=address), f"{API}/auth/login/options", HTTP_X_FORWARDED_FOR=f"203.0.113.{n}").status_code
        for n in range(3)
    ]
    assert codes == [200, 200, 429]


def test_token_creation_is_limited_per_account_across_addresses(alice, rates):
    rates["token_create"] = "2/hour"
    codes = []
    for n in range(3):
        alice.defaults["REMOTE_ADDR"] = next(_addresses)
        codes.append(post_json(alice, f"{API}/tokens", {"name": f"t{n}"}).status_code)
    assert codes == [201, 201, 429]
    assert ApiToken.objects.count() == 2


def test_availability_checks_are_limited(alice, rates):
    rates["availability"] = "2/min"
    codes = [alice.get(f"{API}/identity/availability?handle=free-name").status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_writes_are_limited_per_account(alice, rates):
    rates["account_write"] = "3/min"
    codes = [post_json(alice, f"{API}/identity", {"handle": "alice"}).status_code for _ in range(4)]
    assert codes == [201, 201, 201, 429], "claiming the same handle again is harmless, until the limit"


@pytest.fixture(autouse=True)
def _forget_counts():
    yield
    cache.clear()


def test_the_origin_mismatch_names_the_setting(address):
    """A browser on another port than WEBAUTHN_RP_ORIGIN is told which variable to set."""
    client = Client(REMOTE_ADDR=address)
    options = post_json(client, f"{API}/auth/register/options", {"display_name": "Port"}).json()
    response = post_json(client, f"{API}/auth/register/verify", authenticator().create(options, origin="http://localhost:8091"))
    assert response.status_code == 400
    message = response.json()["credential"][0]
    assert "http://localhost:8091" in message and "WEBAUTHN_RP_ORIGIN" in message


def test_mesh_writes_are_limited_per_account(alice, rates):
    rates["mesh_write"] = "2/min"
    codes = [
        post_json(alice, f"{API}/mesh/peers", {"name": f"p{n}", "generate_key": True}).status_code for n in range(3)
    ]
    assert codes == [201, 201, 429]
    assert alice.get(f"{API}/mesh/peers").status_code == 200, "reading is not a write"
