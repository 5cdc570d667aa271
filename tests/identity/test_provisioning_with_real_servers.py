"""A passkey user's handle really becomes a DNS name in Knot, a Synapse account
and an S3 bucket, provisioned by a real Celery worker, with the console's
events arriving over the WebSocket."""

import asyncio
import json
import time

import dns.resolver
import websockets
from django.test import Client

from forensics.models import LedgerEntry
from tests.passkey_api import API, authenticator, post_json, sign_up

MAX_ATTEMPTS = 3  # as the `backends` fixture sets it


def signed_up(name: str) -> Client:
    client = Client()
    sign_up(client, authenticator(), display_name=name)
    return client


def me_identity(client: Client) -> dict | None:
    return client.get(f"{API}/me").json()["identity"]


def wait_for_status(client: Client, wanted: set[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        identity = me_identity(client)
        if identity and identity["status"] in wanted:
            return identity
        time.sleep(0.2)
    raise AssertionError(f"identity never reached {wanted}: {me_identity(client)}")


def steps(identity: dict) -> dict:
    return {step["kind"]: step for step in identity["steps"]}


def resolve(knot, name: str, rdtype: str = "A") -> list[str]:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = ["127.0.0.1"], knot.port
    try:
        return sorted(r.to_text() for r in resolver.resolve(name, rdtype))
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []


def buckets(s3) -> list[str]:
    return [b["Name"] for b in s3.client().list_buckets()["Buckets"]]


def test_claimed_handle_becomes_a_dns_name_a_matrix_account_and_a_bucket(live, worker, backends):
    knot, synapse, s3 = backends["knot"], backends["synapse"], backends["s3"]
    client = signed_up("Grace Hopper")
    before = client.get(f"{API}/identity/availability", {"handle": "grace"}).json()
    assert before == {
        "handle": "grace",
        "available": True,
        "checks": {"database": "available", "dns": "available", "matrix": "available", "s3": "available"},
    }
    headers = {"Cookie": f"sessionid={client.cookies['sessionid'].value}", "Origin": live.url}

    async def claim_and_watch():
        async with websockets.connect(f"{live.ws_url}/ws/events/", additional_headers=headers) as socket:
            await socket.recv()
            response = await asyncio.to_thread(post_json, client, f"{API}/identity", {"handle": "Grace"})
            assert response.status_code == 201
            assert response.json()["status"] == "pending"
            seen = []
            while not seen or seen[-1]["status"] not in {"active", "failed", "incomplete"}:
                seen.append(json.loads(await asyncio.wait_for(socket.recv(), 30))["data"])
            return seen

    events = asyncio.run(claim_and_watch())
    step_states = [{s["kind"]: s["status"] for s in event["steps"]} for event in events]
    for kind in ("dns", "matrix", "s3"):
        assert any(states.get(kind) == "running" for states in step_states), kind
    assert step_states[-1] == {"dns": "succeeded", "matrix": "succeeded", "s3": "succeeded"}
    assert events[-1]["status"] == "active"

    identity = me_identity(client)
    assert identity["subdomain"] == "grace.test.infrasim"
    assert resolve(knot, "grace.test.infrasim") == ["192.0.2.10"]
    assert resolve(knot, "grace.test.infrasim", "AAAA") == ["2001:db8::10"]
    status, account = synapse.user("@grace:matrix.test.infrasim")
    assert status == 200 and account["displayname"] == "Grace Hopper"
    assert identity["matrix_id"] == "@grace:matrix.test.infrasim"
    assert identity["bucket"] in buckets(s3)

    after = client.get(f"{API}/identity/availability", {"handle": "grace"}).json()
    assert after["available"] is False
    assert after["checks"] == {"database": "taken", "dns": "taken", "matrix": "taken", "s3": "taken"}


def test_a_handle_taken_on_every_backend_fails_clearly_and_overwrites_nothing(live, worker, backends):
    knot, synapse, s3 = backends["knot"], backends["synapse"], backends["s3"]
    synapse.register_with_shared_secret("squatted", admin=False)
    s3.client(account_id="222222222222").create_bucket(Bucket="infrasim-squatted")
    client = signed_up("Late Comer")
    availability = client.get(f"{API}/identity/availability", {"handle": "squatted"}).json()
    assert availability["available"] is False
    assert availability["checks"]["dns"] == availability["checks"]["matrix"] == availability["checks"]["s3"] == "taken"

    assert post_json(client, f"{API}/identity", {"handle": "squatted"}).status_code == 201
    identity = wait_for_status(client, {"failed"})
    by_kind = steps(identity)
    assert "already exists and is not ours" in by_kind["dns"]["last_error"]
    assert "not ours" in by_kind["matrix"]["last_error"]
    assert "another S3 account" in by_kind["s3"]["last_error"]
    assert all(step["attempts"] == 1 for step in by_kind.values()), "permanent errors are not retried"
    assert resolve(knot, "squatted.test.infrasim") == ["198.51.100.7"]
    assert synapse.user("@squatted:matrix.test.infrasim")[1]["displayname"] != "Late Comer"


def test_dns_server_down_retries_then_fails_readably_and_succeeds_on_retry(live, worker, backends):
    knot, synapse = backends["knot"], backends["synapse"]
    client = signed_up("Dee Down")
    knot.stop()
    try:
        assert post_json(client, f"{API}/identity", {"handle": "downtime-dee"}).status_code == 201
        identity = wait_for_status(client, {"failed"})
    finally:
        knot.start()
    by_kind = steps(identity)
    assert by_kind["dns"]["attempts"] == MAX_ATTEMPTS
    assert "unreachable" in by_kind["dns"]["last_error"]
    assert f"gave up after {MAX_ATTEMPTS} attempts" in by_kind["dns"]["last_error"]
    assert by_kind["matrix"]["status"] == by_kind["s3"]["status"] == "succeeded"

    assert post_json(client, f"{API}/identity/provision").status_code == 202
    identity = wait_for_status(client, {"active"})
    by_kind = steps(identity)
    assert by_kind["dns"]["status"] == "succeeded" and by_kind["dns"]["last_error"] == ""
    assert by_kind["matrix"]["attempts"] == 1, "a finished step is not redone"
    assert resolve(knot, "downtime-dee.test.infrasim") == ["192.0.2.10"]
    assert synapse.user("@downtime-dee:matrix.test.infrasim")[0] == 200
    assert LedgerEntry.objects.filter(kind="identity.provisioning.dns.retrying").count() == MAX_ATTEMPTS - 1


def test_cancelling_removes_what_provisioning_created(live, worker, backends):
    knot, synapse, s3 = backends["knot"], backends["synapse"], backends["s3"]
    client = signed_up("Short Stay")
    assert post_json(client, f"{API}/identity", {"handle": "shortstay"}).status_code == 201
    wait_for_status(client, {"active"})

    assert post_json(client, f"{API}/identity/cancel").status_code == 202
    deadline = time.monotonic() + 60
    while me_identity(client) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert me_identity(client) is None
    assert resolve(knot, "shortstay.test.infrasim") == []
    assert synapse.user("@shortstay:matrix.test.infrasim")[1]["deactivated"] is True
    assert "infrasim-shortstay" not in buckets(s3)
    assert LedgerEntry.objects.filter(kind="identity.cancelled", payload__handle="shortstay").exists()
