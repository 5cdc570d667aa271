from datetime import timedelta

from identity.models import UserSession
from identity.sessions import stored_key
from django.test import Client
from django.utils import timezone

from tests.passkey_api import API, authenticator, sign_in, sign_up


def session_row(client: Client) -> UserSession:
    return UserSession.objects.get(session_key=stored_key(client.cookies["sessionid"].value))


def test_a_passkey_session_lasts_24_hours_from_sign_in_and_does_not_slide(db):
    client = Client()
    device = authenticator()
    sign_up(client, device, display_name="Sam Session")
    client.post(f"{API}/auth/logout")
    assert sign_in(client, device).status_code == 200
    expires = session_row(client).expire_date
    assert abs((expires - timezone.now()) - timedelta(hours=24)) < timedelta(minutes=1)
    assert 86390 <= int(client.cookies["sessionid"]["max-age"]) <= 86400

    assert client.get(f"{API}/me").status_code == 200
    # Starting a ceremony writes to the session; that must not extend it either.
    assert client.post(f"{API}/auth/register/options", {}, content_type="application/json").status_code == 200
    assert session_row(client).expire_date == expires, "using the session does not extend it"


def test_a_session_past_its_24_hours_is_signed_out(db):
    client = Client()
    sign_up(client, authenticator(), display_name="Old Session")
    UserSession.objects.filter(session_key=stored_key(client.cookies["sessionid"].value)).update(
        expire_date=timezone.now() - timedelta(seconds=1)
    )
    assert client.get(f"{API}/me").status_code in {401, 403}
    assert client.get("/").status_code == 302


def test_the_database_holds_no_usable_session_key(db):
    """A copy of the sessions table must not let anybody ride a session: only
    a hash of the cookie value is stored."""
    client = Client()
    sign_up(client, authenticator(), display_name="Hash Brown")
    cookie = client.cookies["sessionid"].value
    assert not UserSession.objects.filter(session_key=cookie).exists()
    row = session_row(client)
    assert row.user.display_name == "Hash Brown" and row.passkey_id is not None

    thief = Client()
    thief.cookies["sessionid"] = row.session_key
    assert thief.get(f"{API}/me").status_code in {401, 403}
