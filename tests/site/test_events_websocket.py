import asyncio
import json

import pytest
import websockets
from django.test import Client

from identity.models import User
from infrasim_site.events import publish_to_user


def _session_cookie(user) -> str:
    client = Client()
    client.force_login(user, backend="django_otp_webauthn.backends.WebAuthnBackend")
    return f"sessionid={client.cookies['sessionid'].value}"


async def _receive(socket, timeout=10):
    return json.loads(await asyncio.wait_for(socket.recv(), timeout))


def test_signed_in_user_receives_own_status_events_and_not_others(live):
    alice = User.objects.create_user(display_name="Alice", signup_state="active")
    bob = User.objects.create_user(display_name="Bob", signup_state="active")
    headers = {"Cookie": _session_cookie(alice), "Origin": live.url}

    async def scenario():
        async with websockets.connect(f"{live.ws_url}/ws/events/", additional_headers=headers) as socket:
            assert (await _receive(socket))["kind"] == "hello"
            await asyncio.to_thread(publish_to_user, bob.pk, kind="identity.changed", data={"handle": "bob"})
            await asyncio.to_thread(publish_to_user, alice.pk, kind="identity.changed", data={"handle": "alice"})
            event = await _receive(socket)
            assert event == {"kind": "identity.changed", "data": {"handle": "alice"}}

    asyncio.run(scenario())


def test_anonymous_websocket_is_closed_without_events(live):
    async def scenario():
        async with websockets.connect(f"{live.ws_url}/ws/events/", additional_headers={"Origin": live.url}) as socket:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await _receive(socket)
            assert closed.value.rcvd.code == 4401

    asyncio.run(scenario())


def test_websocket_from_a_foreign_origin_is_refused(live):
    alice = User.objects.create_user(display_name="Alice", signup_state="active")
    headers = {"Cookie": _session_cookie(alice), "Origin": "http://evil.example"}

    async def scenario():
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(f"{live.ws_url}/ws/events/", additional_headers=headers):
                pass

    asyncio.run(scenario())
