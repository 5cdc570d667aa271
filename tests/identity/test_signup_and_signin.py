"""Passkey sign-up and sign-in through /api/meshnet/auth/, the refused
ceremonies, and housekeeping of sign-ups."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone
from django_otp_webauthn.models import WebAuthnCredential

from identity import services
from identity.models import Identity, User
from tests.passkey_api import API, authenticator, post_json, register_options, sign_in, sign_up
from tests.webauthn_authenticator import b64url, b64url_decode

pytestmark = pytest.mark.django_db


from tests.passkey_api import assert_signed_out, signed_in_user


# --- Sign-up, sign-in, handle, provisioning ----------------------------------------


def test_sign_up_sign_in_claim_a_handle_and_provision():
    client, device = Client(), authenticator()

    options = register_options(client, display_name="  Alice   Liddell ")
    assert options["rp"]["id"] == "localhost"
    assert options["authenticatorSelection"]["residentKey"] == "required"
    assert options["authenticatorSelection"]["userVerification"] == "required"
    assert options["user"]["displayName"] == "Alice Liddell"
    assert any(p["alg"] == -7 for p in options["pubKeyCredParams"])

    response = post_json(client, f"{API}/auth/register/verify", {**device.create(options), "passkey_name": "Laptop"})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["passkey"]["name"] == "Laptop"
    assert body["user"]["display_name"] == "Alice Liddell"
    assert body["identity"] is None

    me = client.get(f"{API}/me")
    assert me.status_code == 200
    assert me.json()["user"]["display_name"] == "Alice Liddell"
    assert me.json()["user"]["is_operator"] is False
    assert me.json()["identity"] is None
    user = User.objects.get(account_id=me.json()["user"]["account_id"])
    assert user.signup_state == User.SignupState.ACTIVE
    assert WebAuthnCredential.objects.filter(user=user).count() == 1

    assert post_json(client, f"{API}/auth/logout").status_code == 204
    assert_signed_out(client)

    login_options = post_json(client, f"{API}/auth/login/options").json()
    assert login_options.get("allowCredentials", []) == []
    assert login_options["userVerification"] == "required"
    assert login_options["rpId"] == "localhost"
    response = post_json(client, f"{API}/auth/login/verify", device.get(login_options))
    assert response.status_code == 200, response.content
    assert response.json()["user"]["account_id"] == str(user.account_id)
    assert signed_in_user(client)["account_id"] == str(user.account_id)
    assert WebAuthnCredential.objects.get(user=user).sign_count == device.credentials[0].sign_count

    response = post_json(client, f"{API}/identity", {"handle": "Alice"})
    assert response.status_code == 201, response.content
    claimed = response.json()
    assert claimed["handle"] == "alice"
    assert claimed["subdomain"] == f"alice.{settings.BASE_DOMAIN}"
    assert claimed["matrix_id"] == f"@alice:{settings.MATRIX_DOMAIN}"
    assert claimed["bucket"] == f"{settings.S3_BUCKET_PREFIX}alice"
    assert claimed["status"] == "pending", "claiming a handle starts provisioning it"
    assert client.get(f"{API}/me").json()["identity"]["handle"] == "alice"

    # Claiming the same handle again is harmless; another one is refused.
    assert post_json(client, f"{API}/identity", {"handle": "alice"}).status_code == 201
    other = post_json(client, f"{API}/identity", {"handle": "alice2"})
    assert other.status_code == 409
    assert other.json()["code"] == "already_claimed"

    response = post_json(client, f"{API}/identity/provision")
    assert response.status_code == 202, response.content
    assert response.json()["status"] == "pending"
    assert {step["kind"] for step in response.json()["steps"]} == {"dns", "matrix", "s3"}
    assert Identity.objects.get(user=user).status == Identity.Status.PENDING
    # Asking twice is harmless.
    assert post_json(client, f"{API}/identity/provision").json()["status"] == "pending"


def test_provisioning_without_a_handle_is_a_conflict():
    client = Client()
    sign_up(client, authenticator())
    response = post_json(client, f"{API}/identity/provision")
    assert response.status_code == 409
    assert response.json()["code"] == "no_handle"


@pytest.mark.parametrize(
    "handle, code",
    [
        ("ab", "too_short"),
        ("a" * 33, "too_long"),
        ("1abc", "must_start_with_letter"),
        ("-abc", "must_start_with_letter"),
        ("abc-", "must_end_alphanumeric"),
        ("ab_c", "invalid_characters"),
        ("ab c", "invalid_characters"),
        ("bücher", "invalid_characters"),
        ("a--b", "double_hyphen"),
        ("xn--abc", "double_hyphen"),
        ("admin", "reserved"),
        ("ADMIN", "reserved"),
        ("adrnin", "confusable_reserved"),
        ("r00t", "confusable_reserved"),
    ],
)
def test_invalid_handles_are_refused_naming_the_rule(handle, code):
    client = Client()
    sign_up(client, authenticator())
    response = post_json(client, f"{API}/identity", {"handle": handle})
    assert response.status_code == 400, response.content
    body = response.json()
    assert "handle" in body and body["handle"]
    assert body["code"] == code
    assert not Identity.objects.exists()


@pytest.mark.parametrize("body", [{}, {"handle": None}, {"handle": 12345}, {"handle": ["alice"]}, {"handle": ""}])
def test_malformed_claims_are_400_on_the_handle_field(body):
    client = Client()
    sign_up(client, authenticator())
    response = post_json(client, f"{API}/identity", body)
    assert response.status_code == 400, response.content
    assert "handle" in response.json()


def test_a_taken_handle_and_its_look_alikes_are_409():
    mallory, bob = Client(), Client()
    sign_up(mallory, authenticator(), "Mallory")
    sign_up(bob, authenticator(), "Bob")
    assert post_json(mallory, f"{API}/identity", {"handle": "mallory"}).status_code == 201

    taken = post_json(bob, f"{API}/identity", {"handle": "Mallory"})
    assert taken.status_code == 409
    assert taken.json()["code"] == "taken"
    assert "handle" in taken.json()

    for look_alike in ("rnallory", "ma11ory", "mailory"):
        response = post_json(bob, f"{API}/identity", {"handle": look_alike})
        assert response.status_code == 409, (look_alike, response.content)
        assert response.json()["code"] == "confusable"
        assert "handle" in response.json()

    assert post_json(bob, f"{API}/identity", {"handle": "bob"}).status_code == 201
    assert Identity.objects.count() == 2


def test_passkey_rename_and_bad_names():
    client = Client()
    body = sign_up(client, authenticator())
    passkey_id = body["passkey"]["id"]
    response = client.patch(f"{API}/passkeys/{passkey_id}", {"name": "  Work   key "}, content_type="application/json")
    assert response.status_code == 200, response.content
    assert response.json()["name"] == "Work key"
    for bad in ("", "   ", "x" * 65, "tab\u0000"):
        response = client.patch(f"{API}/passkeys/{passkey_id}", {"name": bad}, content_type="application/json")
        assert response.status_code == 400, (bad, response.content)
        assert "name" in response.json()


def test_a_signed_in_user_adds_a_second_passkey():
    client, laptop, phone = Client(), authenticator(), authenticator()
    sign_up(client, laptop)
    options = register_options(client)
    # The passkey the account already has is excluded.
    assert len(options["excludeCredentials"]) == 1
    response = post_json(client, f"{API}/auth/register/verify", phone.create(options))
    assert response.status_code == 201, response.content
    assert len(client.get(f"{API}/passkeys").json()["results"]) == 2

    # Either passkey signs in to the same account.
    account = signed_in_user(client)["account_id"]
    for device in (laptop, phone):
        fresh = Client()
        assert sign_in(fresh, device).status_code == 200
        assert signed_in_user(fresh)["account_id"] == account


# --- Refused ceremonies ----------------------------------------------------------------


def test_a_replayed_assertion_is_refused_and_does_not_sign_in():
    device = authenticator()
    sign_up(Client(), device)

    client = Client()
    options = post_json(client, f"{API}/auth/login/options").json()
    assertion = device.get(options)
    assert post_json(client, f"{API}/auth/login/verify", assertion).status_code == 200
    assert post_json(client, f"{API}/auth/logout").status_code == 204

    # The same response again: its challenge was consumed.
    again = post_json(client, f"{API}/auth/login/verify", assertion)
    assert 400 <= again.status_code < 500
    assert_signed_out(client)

    # An attacker who captured it, with a fresh challenge of their own.
    attacker = Client()
    assert 400 <= post_json(attacker, f"{API}/auth/login/verify", assertion).status_code < 500
    post_json(attacker, f"{API}/auth/login/options")
    assert 400 <= post_json(attacker, f"{API}/auth/login/verify", assertion).status_code < 500
    assert_signed_out(attacker)


def test_a_failed_assertion_consumes_the_challenge():
    device = authenticator()
    sign_up(Client(), device)
    client = Client()
    options = post_json(client, f"{API}/auth/login/options").json()
    bad = post_json(client, f"{API}/auth/login/verify", device.get(options, origin="https://evil.example"))
    assert 400 <= bad.status_code < 500
    # A correct response to the same challenge is now too late.
    late = post_json(client, f"{API}/auth/login/verify", device.get(options))
    assert late.status_code == 400
    assert_signed_out(client)


@pytest.mark.parametrize(
    "override",
    [
        {"origin": "https://evil.example"},
        {"origin": "http://localhost:1"},
        {"user_verification": False},
        {"rp_id": "evil.example"},
        {"type_": "webauthn.create"},
        {"challenge": b64url(b"another challenge, not the server's")},
    ],
    ids=["foreign-origin", "other-port", "no-uv", "rp-id", "type", "challenge"],
)
def test_a_forged_assertion_is_refused(override):
    device = authenticator()
    sign_up(Client(), device)
    client = Client()
    response = sign_in(client, device, **override)
    assert 400 <= response.status_code < 500, response.content
    assert_signed_out(client)


@pytest.mark.parametrize("whose", ["bob", "none", "random"])
def test_an_assertion_must_carry_its_owners_user_handle(whose):
    alice, bob = authenticator(), authenticator()
    alice_id = sign_up(Client(), alice, "Alice")["passkey"]["id"]
    sign_up(Client(), bob, "Bob")
    handle = {"bob": bob.credentials[0].user_handle, "none": None, "random": b"\x01" * 64}[whose]
    client = Client()
    response = sign_in(client, alice, user_handle=handle)
    assert 400 <= response.status_code < 500, response.content
    assert_signed_out(client)
    # The refused assertion's counter was not stored.
    assert WebAuthnCredential.objects.get(pk=alice_id).sign_count == 0


def test_an_assertion_with_a_tampered_signature_is_refused():
    device = authenticator()
    sign_up(Client(), device)
    client = Client()
    options = post_json(client, f"{API}/auth/login/options").json()
    assertion = device.get(options)
    signature = bytearray(b64url_decode(assertion["response"]["signature"]))
    signature[-1] ^= 0x01
    assertion["response"]["signature"] = b64url(bytes(signature))
    response = post_json(client, f"{API}/auth/login/verify", assertion)
    assert 400 <= response.status_code < 500
    assert_signed_out(client)


def test_an_unknown_credential_is_refused():
    client = Client()
    stranger = authenticator()
    # A passkey this server never registered.
    stranger.create(register_options(Client(), display_name="Nobody"))
    response = sign_in(client, stranger)
    assert 400 <= response.status_code < 500
    assert_signed_out(client)


def test_registration_without_user_verification_is_refused_and_leaves_no_passkey():
    client, device = Client(), authenticator()
    options = register_options(client, display_name="Hasty")
    response = post_json(client, f"{API}/auth/register/verify", device.create(options, user_verification=False))
    assert 400 <= response.status_code < 500, response.content
    assert not WebAuthnCredential.objects.exists()
    assert not User.objects.filter(display_name="Hasty").exists(), "a sign-up without its passkey leaves no account"
    assert_signed_out(client)


@pytest.mark.parametrize(
    "override",
    [{"origin": "https://evil.example"}, {"rp_id": "evil.example"}, {"type_": "webauthn.get"}],
    ids=["origin", "rp-id", "type"],
)
def test_a_forged_registration_is_refused(override):
    client, device = Client(), authenticator()
    options = register_options(client, display_name="Eve")
    response = post_json(client, f"{API}/auth/register/verify", device.create(options, **override))
    assert 400 <= response.status_code < 500, response.content
    assert not WebAuthnCredential.objects.exists()
    assert_signed_out(client)


def test_registering_a_credential_id_that_exists_is_a_conflict_not_a_crash():
    alice = authenticator()
    sign_up(Client(), alice, "Alice")
    existing_id = alice.credentials[0].credential_id

    client, eve = Client(), authenticator()
    options = register_options(client, display_name="Eve")
    response = post_json(client, f"{API}/auth/register/verify", eve.create(options, credential_id=existing_id))
    assert response.status_code == 409, response.content
    assert WebAuthnCredential.objects.count() == 1
    assert_signed_out(client)


def test_verify_without_options_is_400():
    device = authenticator()
    sign_up(Client(), device)
    options = register_options(Client(), display_name="Someone")

    client = Client()
    response = post_json(client, f"{API}/auth/register/verify", device.create(options))
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_state"

    login_options = post_json(Client(), f"{API}/auth/login/options").json()
    response = post_json(client, f"{API}/auth/login/verify", device.get(login_options))
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_state"
    assert_signed_out(client)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c["response"].update(clientDataJSON="not base64 !!"),
        lambda c: c["response"].update(clientDataJSON=b64url(b"not json")),
        lambda c: c["response"].update(clientDataJSON=b64url(b"[1, 2]")),
        lambda c: c["response"].update(attestationObject=b64url(b"\xff\x00 not cbor")),
        lambda c: c["response"].update(attestationObject=b64url(b"\xa0")),
        lambda c: c["response"].update(attestationObject="AAAA"),
        lambda c: c["response"].update(transports="internal"),
        lambda c: c.update(rawId=b64url(b"\x00")),
        lambda c: c.update(authenticatorAttachment="nowhere"),
        lambda c: c.update(type="password"),
        lambda c: c.pop("response"),
    ],
)
def test_malformed_registration_responses_are_4xx(mutate):
    client, device = Client(), authenticator()
    credential = device.create(register_options(client, display_name="Fuzz"))
    mutate(credential)
    response = post_json(client, f"{API}/auth/register/verify", credential)
    assert 400 <= response.status_code < 500, response.content
    assert not WebAuthnCredential.objects.exists()


@pytest.mark.parametrize(
    "results, discoverable",
    [
        ({"credProps": {"rk": True}}, True),
        ({"credProps": {"rk": False}}, False),
        ({}, None),
        ({"credProps": 5}, None),
        ({"credProps": None}, None),
        ({"credProps": "rk"}, None),
        ({"credProps": {"rk": "no"}}, None),
        ({"credProps": {}, "largeBlob": {"supported": True}}, None),
    ],
)
def test_client_extension_results_are_informational_only(results, discoverable):
    client, device = Client(), authenticator()
    credential = device.create(register_options(client, display_name="Ext"))
    credential["clientExtensionResults"] = results
    response = post_json(client, f"{API}/auth/register/verify", credential)
    assert response.status_code == 201, response.content
    assert response.json()["passkey"]["discoverable"] is discoverable


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c["response"].update(authenticatorData=b64url(b"short")),
        lambda c: c["response"].update(clientDataJSON=b64url(b"{}")),
        lambda c: c["response"].update(signature=b64url(b"")),
        lambda c: c["response"].update(signature="***"),
        lambda c: c["response"].update(userHandle="!!"),
        lambda c: c["response"].update(userHandle="A"),
        lambda c: c["response"].update(userHandle="AAAAA"),
        lambda c: c["response"].update(signature="A"),
        lambda c: c.update(rawId="AAAAA"),
        lambda c: c.update(rawId="AAAA"),
        lambda c: c.update(id=None),
    ],
)
def test_malformed_assertions_are_4xx(mutate):
    device = authenticator()
    sign_up(Client(), device)
    client = Client()
    assertion = device.get(post_json(client, f"{API}/auth/login/options").json())
    mutate(assertion)
    response = post_json(client, f"{API}/auth/login/verify", assertion)
    assert 400 <= response.status_code < 500, response.content
    assert_signed_out(client)


@pytest.mark.parametrize("display_name", [None, "", "   ", "x" * 65, "bell\u0007"])
def test_sign_up_needs_a_sensible_display_name(display_name):
    body = {} if display_name is None else {"display_name": display_name}
    response = post_json(Client(), f"{API}/auth/register/options", body)
    assert response.status_code == 400, response.content
    assert "display_name" in response.json()
    assert not User.objects.exists()


def test_trying_again_in_the_same_tab_keeps_one_pending_sign_up():
    client, device = Client(), authenticator()
    first = register_options(client, display_name="First try")
    options = register_options(client, display_name="Second try")
    assert User.objects.count() == 0, "no account row until a passkey is registered"
    assert first["user"]["id"] == options["user"]["id"], "the same user handle, so the authenticator replaces its credential"
    assert post_json(client, f"{API}/auth/register/verify", device.create(options)).status_code == 201
    assert signed_in_user(client)["display_name"] == "Second try"
    assert User.objects.count() == 1


def test_a_disabled_account_cannot_sign_in():
    device = authenticator()
    body = sign_up(Client(), device)
    User.objects.filter(account_id=body["user"]["account_id"]).update(is_active=False)
    client = Client()
    response = sign_in(client, device)
    assert 400 <= response.status_code < 500
    assert_signed_out(client)


# --- Housekeeping ----------------------------------------------------------------------------


def test_starting_sign_ups_creates_no_accounts():
    for n in range(20):
        register_options(Client(), display_name=f"Drive-by {n}")
    assert User.objects.count() == 0
    sign_up(Client(), authenticator(), "Finisher")
    assert list(User.objects.values_list("display_name", "signup_state")) == [("Finisher", User.SignupState.ACTIVE)]


def test_accounts_left_waiting_for_a_passkey_are_purged_after_the_timeout():
    """Accounts from before sign-ups were kept in the session, still waiting."""
    ghost = User.objects.create_user(display_name="Ghost")
    assert ghost.signup_state == User.SignupState.AWAITING_PASSKEY
    now = timezone.now()
    assert services.purge_abandoned_signups(now=now) == 0
    later = now + timedelta(seconds=settings.SIGNUP_ABANDON_SECONDS + 1)
    assert services.purge_abandoned_signups(now=later) == 1
    assert not User.objects.filter(pk=ghost.pk).exists()
