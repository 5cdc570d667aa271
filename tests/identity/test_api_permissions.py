"""Who may call what: anonymous callers, session users, bearer tokens, and
other people's objects."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from django_otp_webauthn.models import WebAuthnCredential

from identity.models import ApiToken, User
from tests.passkey_api import (
    API,
    authenticator,
    bearer,
    create_token,
    post_json,
    register_options,
    sign_in,
)

pytestmark = pytest.mark.django_db

PROTECTED = [
    ("get", f"{API}/me"),
    ("post", f"{API}/identity"),
    ("post", f"{API}/identity/provision"),
    ("get", f"{API}/passkeys"),
    ("get", f"{API}/passkeys/1"),
    ("patch", f"{API}/passkeys/1"),
    ("delete", f"{API}/passkeys/1"),
    ("get", f"{API}/tokens"),
    ("post", f"{API}/tokens"),
    ("get", f"{API}/tokens/1"),
    ("delete", f"{API}/tokens/1"),
    ("get", "/api/schema/"),
    ("get", "/api/docs/"),
    ("get", "/api/"),
]


def call(client: Client, method: str, path: str, **extra):
    if method in ("post", "patch"):
        return getattr(client, method)(path, {"name": "x", "handle": "alice"}, content_type="application/json", **extra)
    return getattr(client, method)(path, **extra)


@pytest.mark.parametrize("method, path", PROTECTED)
def test_anonymous_callers_are_refused(method, path):
    response = call(Client(), method, path)
    assert response.status_code in (401, 403), (method, path, response.status_code)


@pytest.mark.parametrize("method, path", PROTECTED)
def test_a_bad_bearer_token_is_401_everywhere(method, path):
    response = call(Client(), method, path, **bearer("isk_deadbeef_nope"))
    assert response.status_code == 401, (method, path, response.status_code)
    assert response["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer ",
        "Bearer a b",
        "Bearer isk_",
        "Bearer isk_____",
        "Bearer not-an-isk-token",
        "Bearer isk_\u00e9\u00e9_x",
        "bearer isk_12345678_" + "x" * 5000,
    ],
)
def test_malformed_bearer_headers_are_401(header):
    response = Client().get(f"{API}/me", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401, response.content


def test_the_auth_endpoints_are_open_to_anonymous_callers():
    assert post_json(Client(), f"{API}/auth/login/options").status_code == 200
    assert post_json(Client(), f"{API}/auth/register/options", {"display_name": "New"}).status_code == 200


# --- API tokens ---------------------------------------------------------------------------


def test_a_token_is_shown_once_and_reaches_its_owners_me_only(alice, bob):
    created = create_token(alice, "laptop")
    secret = created["token"]
    assert secret.startswith("isk_") and created["prefix"] in secret
    assert created["name"] == "laptop"

    listing = alice.get(f"{API}/tokens")
    assert listing.status_code == 200
    assert secret not in listing.content.decode()
    [row] = listing.json()["results"]
    assert "token" not in row and "secret_hash" not in row
    detail = alice.get(f"{API}/tokens/{created['id']}")
    assert detail.status_code == 200 and "token" not in detail.json()
    assert secret not in detail.content.decode()
    assert not ApiToken.objects.filter(secret_hash=secret).exists()

    # The bearer reaches its owner's account with no session at all.
    anonymous = Client()
    me = anonymous.get(f"{API}/me", **bearer(secret))
    assert me.status_code == 200
    assert me.json()["user"]["account_id"] == alice.account_id
    # Bob's session does not change whom Alice's token is.
    assert bob.get(f"{API}/me", **bearer(secret)).json()["user"]["account_id"] == alice.account_id
    assert ApiToken.objects.get(pk=created["id"]).last_used_at is not None

    # Bob sees neither Alice's token nor her passkeys.
    assert bob.get(f"{API}/tokens").json()["results"] == []
    assert bob.get(f"{API}/tokens/{created['id']}").status_code == 404
    assert bob.delete(f"{API}/tokens/{created['id']}").status_code == 404
    assert [p["id"] for p in bob.get(f"{API}/passkeys").json()["results"]] == [bob.passkey_id]
    assert bob.get(f"{API}/passkeys/{alice.passkey_id}").status_code == 404
    response = bob.patch(f"{API}/passkeys/{alice.passkey_id}", {"name": "mine"}, content_type="application/json")
    assert response.status_code == 404
    assert bob.delete(f"{API}/passkeys/{alice.passkey_id}").status_code == 404
    assert WebAuthnCredential.objects.get(pk=alice.passkey_id).name != "mine"
    # Not even with Bob's own token: no token reaches credentials at all.
    bob_secret = create_token(bob, "bob")["token"]
    assert anonymous.get(f"{API}/tokens/{created['id']}", **bearer(bob_secret)).status_code == 403
    assert anonymous.get(f"{API}/passkeys/{alice.passkey_id}", **bearer(bob_secret)).status_code == 403


def test_a_write_token_reaches_resources_but_never_credentials(alice):
    secret = create_token(alice, scope="write")["token"]
    client = Client()
    for path in (f"{API}/passkeys", f"{API}/tokens"):
        refused = client.get(path, **bearer(secret))
        assert refused.status_code == 403, path
        assert "API tokens cannot manage credentials" in refused.json()["detail"]
    claimed = post_json(client, f"{API}/identity", {"handle": "alice"}, **bearer(secret))
    assert claimed.status_code == 201
    assert post_json(client, f"{API}/identity/provision", **bearer(secret)).status_code == 202
    assert client.get("/api/", **bearer(secret)).status_code == 200
    assert client.get("/api/schema/", **bearer(secret)).status_code == 200
    # Logging out with a token ends no session and keeps the token usable.
    assert post_json(client, f"{API}/auth/logout", **bearer(secret)).status_code == 204
    assert client.get(f"{API}/me", **bearer(secret)).status_code == 200


def test_a_read_only_token_reads_but_changes_nothing(alice):
    created = create_token(alice)
    assert created["scope"] == "read", "tokens are read-only unless asked otherwise"
    client = Client()
    assert client.get(f"{API}/me", **bearer(created["token"])).status_code == 200
    refused = post_json(client, f"{API}/identity", {"handle": "alice"}, **bearer(created["token"]))
    assert refused.status_code == 403
    assert "read-only" in refused.json()["detail"]
    assert client.get(f"{API}/me", **bearer(created["token"])).json()["identity"] is None


def test_a_revoked_token_is_refused(alice):
    created = create_token(alice)
    assert Client().get(f"{API}/me", **bearer(created["token"])).status_code == 200
    assert alice.delete(f"{API}/tokens/{created['id']}").status_code == 204
    response = Client().get(f"{API}/me", **bearer(created["token"]))
    assert response.status_code == 401
    listed = alice.get(f"{API}/tokens/{created['id']}").json()
    assert listed["revoked_at"] is not None
    # Revoking again is harmless.
    assert alice.delete(f"{API}/tokens/{created['id']}").status_code == 204


def test_a_token_cannot_revoke_tokens_not_even_itself(alice):
    created = create_token(alice, scope="write")
    client = Client()
    assert client.delete(f"{API}/tokens/{created['id']}", **bearer(created["token"])).status_code == 403
    assert client.get(f"{API}/me", **bearer(created["token"])).status_code == 200


def test_an_expired_token_is_refused(alice):
    created = create_token(alice)
    ApiToken.objects.filter(pk=created["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert Client().get(f"{API}/me", **bearer(created["token"])).status_code == 401


def test_a_token_with_an_expiry_works_until_then(alice):
    expires = (timezone.now() + timedelta(days=1)).isoformat()
    created = create_token(alice, "short", expires_at=expires)
    assert created["expires_at"] is not None
    assert Client().get(f"{API}/me", **bearer(created["token"])).status_code == 200


def test_a_deactivated_users_token_is_refused(alice):
    created = create_token(alice)
    User.objects.filter(account_id=alice.account_id).update(is_active=False)
    assert Client().get(f"{API}/me", **bearer(created["token"])).status_code == 401


def test_a_guessed_secret_with_a_real_prefix_is_refused(alice):
    created = create_token(alice)
    forged = f"isk_{created['prefix']}_{'A' * 43}"
    assert Client().get(f"{API}/me", **bearer(forged)).status_code == 401


@pytest.mark.parametrize(
    "body, field, status",
    [
        ({}, "name", 400),
        ({"name": ""}, "name", 400),
        ({"name": "x" * 65}, "name", 400),
        ({"name": "ok", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at", 400),
        ({"name": "ok", "expires_at": "tomorrow"}, "expires_at", 400),
    ],
)
def test_bad_token_requests_name_the_field(alice, body, field, status):
    response = post_json(alice, f"{API}/tokens", body)
    assert response.status_code == status, response.content
    assert field in response.json()


def test_token_names_are_unique_per_user(alice, bob):
    create_token(alice, "ci")
    duplicate = post_json(alice, f"{API}/tokens", {"name": "ci"})
    assert duplicate.status_code == 409
    assert duplicate.json()["code"] == "duplicate_name"
    create_token(bob, "ci")


# --- Passkeys ----------------------------------------------------------------------------------


def test_the_last_passkey_cannot_be_deleted_but_one_of_two_can(alice):
    response = alice.delete(f"{API}/passkeys/{alice.passkey_id}")
    assert response.status_code == 409
    assert response.json()["code"] == "last_passkey"
    assert WebAuthnCredential.objects.filter(pk=alice.passkey_id).exists()

    options = register_options(alice)
    second_device = authenticator()
    second = post_json(alice, f"{API}/auth/register/verify", second_device.create(options))
    assert second.status_code == 201
    second_id = second.json()["passkey"]["id"]

    # Deleting the passkey this session signed in with also ends this session.
    assert alice.delete(f"{API}/passkeys/{alice.passkey_id}").status_code == 204
    assert alice.get(f"{API}/me").status_code in (401, 403)
    # The deleted passkey signs in no more; the other one does.
    client = Client()
    assert 400 <= sign_in(client, alice.device).status_code < 500
    assert client.get(f"{API}/me").status_code in (401, 403)
    assert sign_in(client, second_device).status_code == 200
    assert [p["id"] for p in client.get(f"{API}/passkeys").json()["results"]] == [second_id]
    assert client.delete(f"{API}/passkeys/{second_id}").status_code == 409


def test_a_registration_started_by_one_user_cannot_be_finished_by_another(alice, bob):
    """Alice's session holds her pending "add a passkey" ceremony; a request
    on that session that presents Bob's token is refused before it starts."""
    bob_secret = create_token(bob, "bob", scope="write")["token"]
    options = register_options(alice)
    response = post_json(alice, f"{API}/auth/register/verify", authenticator().create(options), **bearer(bob_secret))
    assert response.status_code == 403, response.content
    assert WebAuthnCredential.objects.filter(user__account_id=bob.account_id).count() == 1
    assert WebAuthnCredential.objects.filter(user__account_id=alice.account_id).count() == 1


# --- Listings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("resource", ["passkeys", "tokens"])
@pytest.mark.parametrize(
    "query",
    [
        "limit=100000000000000000000",
        "limit=9223372036854775808",
        "offset=100000000000000000000",
        "offset=9223372036854775807&limit=9223372036854775807",
        "offset=-1",
        "limit=-5",
        "limit=abc",
        "limit=0",
    ],
)
def test_list_paging_parameters_never_break_a_listing(alice, resource, query):
    create_token(alice)
    response = alice.get(f"{API}/{resource}?{query}")
    assert response.status_code == 200, response.content
    assert response.json()["count"] == 1


def test_paging_counts_right_with_and_without_the_count_query(alice):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for n in range(3):
        create_token(alice, f"t{n}")
    with CaptureQueriesContext(connection) as queries:
        whole = alice.get(f"{API}/tokens").json()
    assert whole["count"] == 3 and len(whole["results"]) == 3 and whole["next"] is None
    assert not [q for q in queries if "COUNT(" in q["sql"]], "a first page that is not full counts itself"
    page = alice.get(f"{API}/tokens?limit=2").json()
    assert page["count"] == 3 and len(page["results"]) == 2 and page["next"]
    rest = alice.get(f"{API}/tokens?limit=2&offset=2").json()
    assert rest["count"] == 3 and len(rest["results"]) == 1 and rest["previous"]
    beyond = alice.get(f"{API}/tokens?limit=2&offset=10").json()
    assert beyond["count"] == 3 and beyond["results"] == []
