import asyncio
import json
import logging

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


@pytest.fixture()
def server_errors(caplog):
    """ERROR records from the live server too: uvicorn's loggers do not
    propagate to the root logger that caplog listens on."""
    uvicorn_logger = logging.getLogger("uvicorn")
    uvicorn_logger.addHandler(caplog.handler)
    yield lambda: [r for r in caplog.records if r.levelno >= logging.ERROR]
    uvicorn_logger.removeHandler(caplog.handler)


@pytest.mark.parametrize("origin", ["http://localhost:9999", "https://localhost:{port}", "http://localhost.evil.example:{port}"])
def test_websocket_from_another_port_or_scheme_of_our_host_is_refused(live, origin):
    alice = User.objects.create_user(display_name="Alice", signup_state="active")
    headers = {"Cookie": _session_cookie(alice), "Origin": origin.format(port=live.port)}

    async def scenario():
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(f"{live.ws_url}/ws/events/", additional_headers=headers):
                pass
        assert refused.value.response.status_code == 403

    asyncio.run(scenario())


def test_websocket_from_our_exact_origin_is_accepted_and_answers_pings(live):
    alice = User.objects.create_user(display_name="Alice", signup_state="active")
    headers = {"Cookie": _session_cookie(alice), "Origin": f"http://localhost:{live.port}"}

    async def scenario():
        async with websockets.connect(f"{live.ws_url}/ws/events/", additional_headers=headers) as socket:
            assert (await _receive(socket))["kind"] == "hello"
            await socket.send(json.dumps({"kind": "ping"}))
            assert await _receive(socket) == {"kind": "pong", "data": {}}

    asyncio.run(scenario())


@pytest.mark.parametrize("frame", ["not json", "[1,2]", '"x"', "42", "", "[" * 5000, '{"kind": NaN}', b"\x00binary"])
def test_a_frame_that_is_not_a_json_object_closes_the_socket_with_4400(live, server_errors, frame):
    alice = User.objects.create_user(display_name="Alice", signup_state="active")
    headers = {"Cookie": _session_cookie(alice), "Origin": live.url}

    async def scenario():
        async with websockets.connect(f"{live.ws_url}/ws/events/", additional_headers=headers) as socket:
            assert (await _receive(socket))["kind"] == "hello"
            await socket.send(frame)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await _receive(socket)
            assert closed.value.rcvd.code == 4400
            assert closed.value.rcvd.reason == "bad frame"

    asyncio.run(scenario())
    assert server_errors() == []
