"""Credentials (passkeys, tokens) are managed only from a session signed in
with a passkey, the most sensitive changes need a passkey check within the
last 10 minutes, and no API token, whatever its scope, reaches them."""

from __future__ import annotations

import time

import pytest
from django.test import Client
from django_otp_webauthn.models import WebAuthnCredential

from forensics.models import LedgerEntry
from identity.models import ApiToken, User, UserSession
from identity.sessions import CHECKED_AT_KEY
from tests.passkey_api import API, authenticator, bearer, create_token, post_json, register_options, sign_in

pytestmark = pytest.mark.django_db


def age_passkey_check(client: Client, seconds: float) -> None:
    session = client.session
    session[CHECKED_AT_KEY] = time.time() - seconds
    session.save()


def snapshot() -> tuple:
    return (
        sorted(WebAuthnCredential.objects.values_list("pk", "user_id")),
        sorted(ApiToken.objects.values_list("pk", "revoked_at")),
        UserSession.objects.count(),
        User.objects.count(),
    )


def test_a_token_cannot_take_over_its_account(alice):
    """The whole chain from the issue: with only `Authorization: Bearer`,
    adding an attacker's passkey, deleting the owner's, minting tokens and
    reaching the admin are each refused, and nothing changes."""
    User.objects.filter(account_id=alice.account_id).update(is_staff=True, is_superuser=True)
    secret = create_token(alice, "automation", scope="write")["token"]
    attacker, attacker_device = Client(), authenticator()
    # Options from an anonymous sign-up, for the attacker to answer below.
    anonymous_options = register_options(Client(), display_name="x")
    before, ledger_before = snapshot(), LedgerEntry.objects.count()

    options = post_json(attacker, f"{API}/auth/register/options", {"display_name": "x"}, **bearer(secret))
    assert options.status_code == 403, options.content
    # Even with a genuine answer, the token cannot put a passkey on the owner's account.
    verify = post_json(attacker, f"{API}/auth/register/verify", attacker_device.create(anonymous_options), **bearer(secret))
    assert verify.status_code == 403
    assert attacker.delete(f"{API}/passkeys/{alice.passkey_id}", **bearer(secret)).status_code == 403
    assert post_json(attacker, f"{API}/tokens", {"name": "mine", "scope": "write"}, **bearer(secret)).status_code == 403
    assert post_json(attacker, f"{API}/auth/login/options", **bearer(secret)).status_code == 403
    admin = attacker.get("/admin/", **bearer(secret))
    assert admin.status_code == 302 and admin["Location"].startswith(("/admin/login/", "/signin/"))
    assert attacker.get(admin["Location"], follow=True, **bearer(secret)).request["PATH_INFO"] == "/signin/"

    assert snapshot() == before
    assert LedgerEntry.objects.count() == ledger_before


def test_a_forced_login_without_a_passkey_cannot_manage_credentials(db):
    """A session that never proved a passkey (e.g. made by a management
    command or a test helper) reaches resources but not credentials."""
    user = User.objects.create_user(display_name="No Passkey", signup_state=User.SignupState.ACTIVE)
    client = Client()
    client.force_login(user, backend="django_otp_webauthn.backends.WebAuthnBackend")
    assert client.get(f"{API}/me").status_code == 200
    assert client.get(f"{API}/tokens").status_code == 403
    assert post_json(client, f"{API}/tokens", {"name": "x"}).status_code == 403
    assert post_json(client, f"{API}/auth/register/options", {}).status_code == 403
    assert client.get("/tokens/").status_code == 302


@pytest.mark.parametrize("action", ["create token", "add passkey", "delete passkey"])
def test_sensitive_changes_need_a_recent_passkey_check(alice, action):
    second_device = authenticator()
    options = register_options(alice)
    second_id = post_json(alice, f"{API}/auth/register/verify", second_device.create(options)).json()["passkey"]["id"]
    age_passkey_check(alice, 11 * 60)
    before = snapshot()

    def attempt():
        if action == "create token":
            return post_json(alice, f"{API}/tokens", {"name": "late"})
        if action == "add passkey":
            return post_json(alice, f"{API}/auth/register/options", {})
        return alice.delete(f"{API}/passkeys/{second_id}")

    refused = attempt()
    assert refused.status_code == 403, refused.content
    assert refused.json()["code"] == "passkey_recheck_required"
    assert "passkey" in refused.json()["detail"]
    assert snapshot() == before
    # Reading and harmless changes still work in the stale session.
    assert alice.get(f"{API}/tokens").status_code == 200
    assert alice.patch(f"{API}/passkeys/{second_id}", {"name": "Phone"}, content_type="application/json").status_code == 200

    # The re-check is a passkey sign-in in the same session.
    assert sign_in(alice, alice.device).status_code == 200
    assert attempt().status_code in (200, 201, 204)


def test_deleting_a_passkey_ends_the_sessions_signed_in_with_it(alice):
    laptop = alice  # signed in with the first passkey
    phone_device = authenticator()
    options = register_options(laptop)
    phone_passkey = post_json(laptop, f"{API}/auth/register/verify", phone_device.create(options)).json()["passkey"]["id"]
    phone = Client()
    assert sign_in(phone, phone_device).status_code == 200
    other_laptop_tab = Client()
    assert sign_in(other_laptop_tab, laptop.device).status_code == 200

    assert laptop.delete(f"{API}/passkeys/{phone_passkey}").status_code == 204
    assert phone.get(f"{API}/me").status_code in (401, 403), "the phone's session ended with its passkey"
    assert laptop.get(f"{API}/me").status_code == 200
    assert other_laptop_tab.get(f"{API}/me").status_code == 200
    entry = LedgerEntry.objects.filter(kind="identity.passkey.deleted").last()
    assert entry.payload["sessions_ended"] == 1


def test_sign_out_everywhere_else_keeps_only_this_session(alice):
    others = [Client() for _ in range(3)]
    for other in others:
        assert sign_in(other, alice.device).status_code == 200
    page = alice.get("/passkeys/")
    assert "You are signed in on 3 other browsers" in page.content.decode()

    response = alice.post("/sessions/end-others", follow=True)
    assert "3 other sessions ended" in response.content.decode()
    assert alice.get(f"{API}/me").status_code == 200
    for other in others:
        assert other.get(f"{API}/me").status_code in (401, 403)
    assert "This is your only session." in alice.get("/passkeys/").content.decode()


def test_the_console_asks_for_a_passkey_check_before_creating_a_token(alice):
    age_passkey_check(alice, 11 * 60)
    page = alice.get("/tokens/").content.decode()
    assert 'data-testid="recheck-prompt"' in page
    response = alice.post("/tokens/", {"name": "late", "scope": "read"}, follow=True)
    assert "Confirm with your passkey first" in response.content.decode()
    assert not ApiToken.objects.filter(name="late").exists()

    assert sign_in(alice, alice.device).status_code == 200
    created = alice.post("/tokens/", {"name": "fresh", "scope": "write"})
    assert created.status_code == 200
    assert "no-store" in created["Cache-Control"]
    token = ApiToken.objects.get(name="fresh")
    assert token.scope == "write"
    assert 'data-testid="recheck-prompt"' not in created.content.decode()
