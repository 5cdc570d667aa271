"""Drive the /api/meshnet/ passkey ceremonies with Django's test Client and
the software authenticator, the way the console's JavaScript does."""

from __future__ import annotations

from django.conf import settings
from django.test import Client

from tests.webauthn_authenticator import SoftAuthenticator

API = "/api/meshnet"


def post_json(client: Client, path: str, data=None, **extra):
    return client.post(path, data if data is not None else {}, content_type="application/json", **extra)


def authenticator() -> SoftAuthenticator:
    return SoftAuthenticator(rp_id=settings.WEBAUTHN_RP_ID, origin=settings.WEBAUTHN_RP_ORIGIN)


def register_options(client: Client, **body) -> dict:
    response = post_json(client, f"{API}/auth/register/options", body)
    assert response.status_code == 200, response.content
    return response.json()


def sign_up(client: Client, device: SoftAuthenticator, display_name: str = "Alice") -> dict:
    """Create an account with a first passkey; the client ends up signed in."""
    options = register_options(client, display_name=display_name)
    response = post_json(client, f"{API}/auth/register/verify", device.create(options))
    assert response.status_code == 201, response.content
    return response.json()


def sign_in(client: Client, device: SoftAuthenticator, **get_kwargs):
    options = post_json(client, f"{API}/auth/login/options").json()
    return post_json(client, f"{API}/auth/login/verify", device.get(options, **get_kwargs))


def create_token(client: Client, name: str = "ci", **body) -> dict:
    response = post_json(client, f"{API}/tokens", {"name": name, **body})
    assert response.status_code == 201, response.content
    return response.json()


def bearer(token: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def signed_in_user(client: Client):
    response = client.get(f"{API}/me")
    return response.json()["user"] if response.status_code == 200 else None


def assert_signed_out(client: Client):
    assert client.get(f"{API}/me").status_code in (401, 403)
