"""Who reaches which object: one line per object route, checked for the
owner, another user, an operator, an anonymous client, the owner's tokens of
each scope and another user's token. Every new object route joins with one
line in ROUTES (NetBox's utilities/testing approach).

Expectations, from DESIGN.md's security rules:
- another user's object answers 404, never its data;
- operators see every resource (peers, appliances...), but credentials
  (passkeys, tokens) stay personal: an operator gets 404 there too;
- anonymous callers get 401 (the API names its Bearer scheme);
- a token never reaches credentials (403); a read-only token may read
  resources but not change them (403); a write token acts as its owner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
from django.test import Client

from mesh import services as mesh_services
from tests.passkey_api import API, authenticator, bearer, create_token, register_options, post_json
from tests.people import person, signed_in_person

pytestmark = pytest.mark.django_db

ACTORS = ["owner", "other_user", "operator", "anonymous", "owner_read_token", "owner_write_token", "other_write_token"]


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    path: str  # "{id}" is the object's id
    make: Callable  # (owner Client) -> object id
    credential: bool  # passkeys and tokens: personal, never reached by tokens
    ok: tuple[int, ...]
    body: dict | None = None

    @property
    def writes(self) -> bool:
        return self.method not in ("get", "head")


def second_passkey(owner: Client) -> int:
    options = register_options(owner)
    return post_json(owner, f"{API}/auth/register/verify", authenticator().create(options)).json()["passkey"]["id"]


def a_token(owner: Client) -> int:
    return create_token(owner, "matrix-object")["id"]


def a_peer(owner: Client) -> int:
    return mesh_services.peer_create(actor=owner.user, name="matrix peer", generate_key=True).peer.pk


def _grantee() -> None:
    person("grantee")


def a_peer_and_a_grantee(owner: Client) -> int:
    _grantee()
    return a_peer(owner)


def a_shared_peer(owner: Client) -> int:
    _grantee()
    peer_id = a_peer(owner)
    mesh_services.peer_share_create(actor=owner.user, peer_id=peer_id, handle="grantee")
    return peer_id


def an_appliance(owner: Client, status: str = "ready") -> int:
    """An appliance whose jobs wait on a queue no worker consumes: the
    request side (authorization, state rules) is what the matrix checks."""
    from appliances.models import Appliance, Host, Operation
    from appliances.services import appliance_create
    from tests.appliances.conftest import ensure_catalog

    ensure_catalog()
    for name in ("matrix-a", "matrix-b"):
        Host.objects.get_or_create(name=name, defaults=dict(
            queue=f"host.test-{name}", vcpus=64, memory_mib=65536, disk_gib=1000, storage_dir="/nonexistent",
            image_cache_dir="/nonexistent",
        ))
    appliance = appliance_create(actor=owner.user, name="matrix vm", template="debian-bookworm-local")
    Operation.objects.filter(appliance=appliance).update(status="succeeded")
    Appliance.objects.filter(pk=appliance.pk).update(status=status)
    return appliance.pk


def a_stopped_appliance(owner: Client) -> int:
    return an_appliance(owner, status="stopped")


def an_appliance_with_a_snapshot(owner: Client) -> int:
    from appliances.models import Snapshot

    appliance_id = an_appliance(owner)
    Snapshot.objects.create(appliance_id=appliance_id, name="matrix-snap")
    return appliance_id


def an_appliance_with_an_archive(owner: Client) -> int:
    """A finished export on file (the download route serves it)."""
    import hashlib
    import tempfile
    from pathlib import Path

    from appliances.models import Archive

    appliance_id = an_appliance(owner)
    body = b"matrix archive bytes"
    path = Path(tempfile.mkdtemp(prefix="matrix-archive-")) / "archive.tar.gz"
    path.write_bytes(body)
    Archive.objects.create(appliance_id=appliance_id, path=str(path), size=len(body),
                           sha256=hashlib.sha256(body).hexdigest(), consistency="stopped")
    return appliance_id


def a_capture(owner: Client) -> int:
    """A finished memory capture the owner requested (owners may, in the matrix)."""
    from tests.forensics.acquisitions import a_complete_acquisition

    return a_complete_acquisition(owner.user).pk


def a_log_entry(owner: Client) -> int:
    """An entry of the transparency log that concerns the owner (their sign-up)."""
    from forensics.models import LedgerEntry

    return LedgerEntry.objects.filter(concerns=owner.user.pk).order_by("index").first().index


def snapshot_of(appliance_id: int) -> int:
    from appliances.models import Snapshot

    return Snapshot.objects.get(appliance_id=appliance_id).pk


ROUTES = [
    Route("passkey detail", "get", f"{API}/passkeys/{{id}}", second_passkey, True, (200,)),
    Route("passkey rename", "patch", f"{API}/passkeys/{{id}}", second_passkey, True, (200,), {"name": "renamed"}),
    Route("passkey delete", "delete", f"{API}/passkeys/{{id}}", second_passkey, True, (204,)),
    Route("token detail", "get", f"{API}/tokens/{{id}}", a_token, True, (200,)),
    Route("token revoke", "delete", f"{API}/tokens/{{id}}", a_token, True, (204,)),
    Route("peer detail", "get", f"{API}/mesh/peers/{{id}}", a_peer, False, (200,)),
    Route("peer config", "get", f"{API}/mesh/peers/{{id}}/config", a_peer, False, (200,)),
    Route("peer config qr", "get", f"{API}/mesh/peers/{{id}}/config?format=qr", a_peer, False, (200,)),
    Route("peer rotate", "post", f"{API}/mesh/peers/{{id}}/rotate", a_peer, False, (200,), {"generate_key": True}),
    Route("peer revoke", "post", f"{API}/mesh/peers/{{id}}/revoke", a_peer, False, (200,)),
    Route("peer delete", "delete", f"{API}/mesh/peers/{{id}}", a_peer, False, (204,)),
    Route("peer shares", "get", f"{API}/mesh/peers/{{id}}/shares", a_shared_peer, False, (200,)),
    Route("peer share", "post", f"{API}/mesh/peers/{{id}}/shares", a_peer_and_a_grantee, False, (201,), {"handle": "grantee"}),
    Route("peer unshare", "delete", f"{API}/mesh/peers/{{id}}/shares/grantee", a_shared_peer, False, (204,)),
    Route("appliance detail", "get", f"{API}/appliances/{{id}}", an_appliance, False, (200,)),
    Route("appliance delete", "delete", f"{API}/appliances/{{id}}", an_appliance, False, (202,)),
    Route("appliance start", "post", f"{API}/appliances/{{id}}/start", a_stopped_appliance, False, (202,)),
    Route("appliance shutdown", "post", f"{API}/appliances/{{id}}/shutdown", an_appliance, False, (202,)),
    Route("appliance reboot", "post", f"{API}/appliances/{{id}}/reboot", an_appliance, False, (202,)),
    Route("appliance poweroff", "post", f"{API}/appliances/{{id}}/poweroff", an_appliance, False, (202,)),
    Route("appliance migrate", "post", f"{API}/appliances/{{id}}/migrate", an_appliance, False, (202,), {}),
    Route("appliance operations", "get", f"{API}/appliances/{{id}}/operations", an_appliance, False, (200,)),
    # No worker serves the matrix's hosts: reaching the host (503) is what authorization allows.
    Route("appliance console log", "get", f"{API}/appliances/{{id}}/console-log", an_appliance, False, (503,)),
    Route("appliance snapshots", "get", f"{API}/appliances/{{id}}/snapshots", an_appliance, False, (200,)),
    Route("appliance snapshot", "post", f"{API}/appliances/{{id}}/snapshots", an_appliance, False, (202,),
          {"name": "matrix-new"}),
    Route("appliance snapshot revert", "post", f"{API}/appliances/{{id}}/snapshots/{{sid}}/revert",
          an_appliance_with_a_snapshot, False, (202,)),
    Route("appliance snapshot delete", "delete", f"{API}/appliances/{{id}}/snapshots/{{sid}}",
          an_appliance_with_a_snapshot, False, (202,)),
    Route("appliance export", "post", f"{API}/appliances/{{id}}/archive", an_appliance, False, (202,)),
    # With no archive yet, the download starts an export and answers 202.
    Route("appliance archive, none yet", "get", f"{API}/appliances/{{id}}/archive", an_appliance, False, (202,)),
    Route("appliance archive download", "get", f"{API}/appliances/{{id}}/archive", an_appliance_with_an_archive,
          False, (200,)),
    Route("appliance archives", "get", f"{API}/appliances/{{id}}/archives", an_appliance_with_an_archive, False,
          (200,)),
    Route("memory capture detail", "get", "/api/forensics/acquisitions/{id}", a_capture, False, (200,)),
    Route("memory capture evidence", "get", "/api/forensics/acquisitions/{id}/evidence", a_capture, False, (200,)),
    Route("memory capture bundle", "get", "/api/forensics/acquisitions/{id}/bundle", a_capture, False, (200,)),
    # Co-signing is the requester's passkey at work: personal, like credentials.
    Route("log entry", "get", "/api/forensics/log/entries/{id}", a_log_entry, False, (200,)),
    Route("memory capture cosign options", "get", "/api/forensics/acquisitions/{id}/cosign", a_capture, True, (200,)),
]


def expected(route: Route, actor: str) -> tuple[int, ...]:
    if actor == "anonymous":
        return (401,)
    if actor.endswith("token") and route.credential:
        return (403,)
    if actor == "owner_read_token" and route.writes:
        return (403,)
    if actor in ("owner", "owner_read_token", "owner_write_token"):
        return route.ok
    if actor == "operator" and not route.credential:
        return route.ok
    return (404,)


def call(client: Client, route: Route, object_id: int, **extra):
    path = route.path.format(id=object_id, sid=snapshot_of(object_id) if "{sid}" in route.path else "")
    if route.method in ("post", "patch"):
        return getattr(client, route.method)(path, route.body or {}, content_type="application/json", **extra)
    return getattr(client, route.method)(path, **extra)


def caller(actor: str, owner: Client) -> tuple[Client, dict]:
    if actor == "owner":
        return owner, {}
    if actor == "other_user":
        return signed_in_person("Mallory"), {}
    if actor == "operator":
        return signed_in_person("Olga Operator", operator=True), {}
    if actor == "anonymous":
        return Client(), {}
    if actor == "other_write_token":
        return Client(), bearer(create_token(signed_in_person("Mallory"), "mallory", scope="write")["token"])
    scope = "read" if actor == "owner_read_token" else "write"
    return Client(), bearer(create_token(owner, f"owner-{scope}", scope=scope)["token"])


@pytest.mark.parametrize("actor", ACTORS)
@pytest.mark.parametrize("route", ROUTES, ids=lambda route: route.name)
def test_owned_resource_matrix(route, actor, settings):
    settings.APPLIANCE_HOST_ANSWER_SECONDS = 1
    settings.FORENSICS_OWNERS_MAY_ACQUIRE = True
    owner = signed_in_person("Olive Owner")
    object_id = route.make(owner)
    client, headers = caller(actor, owner)
    response = call(client, route, object_id, **headers)
    assert response.status_code in expected(route, actor), (route.name, actor, response.status_code, response.content[:300])
    if response.status_code == 404:
        assert b"matrix" not in response.content, "a refusal must not show the object's data"
