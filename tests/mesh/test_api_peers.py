"""The mesh API: creating, listing, downloading, rotating and revoking peers,
and every kind of bad input answered with a clear 4xx and nothing half-made."""

import ipaddress
import subprocess

import pytest
from django.db.models import F
from django.test import Client

from identity.models import User
from mesh import keys
from mesh.models import AddressLease, MeshNetwork, Peer
from mesh.services import network_create, peer_create
from tests.concurrency import race
from tests.people import client_for, signed_in_person

API = "/api/meshnet/mesh"
BACKEND = "django_otp_webauthn.backends.WebAuthnBackend"


def post(client, path, data=None):
    return client.post(f"{API}/{path}", data or {}, content_type="application/json")


@pytest.fixture()
def alice(db):
    return User.objects.create_user(display_name="Alice", signup_state="active")


@pytest.fixture()
def bob(db):
    return User.objects.create_user(display_name="Bob", signup_state="active")


@pytest.fixture()
def operator_session(db):
    """An operator's browser, signed in with a passkey (secrets need one)."""
    return signed_in_person("Olga", operator=True)


@pytest.fixture()
def operator(operator_session):
    return operator_session.user


def wg_pubkey(private_key: str) -> str:
    return subprocess.run(["wg", "pubkey"], input=private_key, capture_output=True, text=True, check=True).stdout.strip()


def test_a_peer_with_the_users_own_key_gets_addresses_and_a_config_without_private_key(alice):
    client = client_for(alice)
    private = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
    response = post(client, "peers", {"name": "laptop", "public_key": wg_pubkey(private)})
    assert response.status_code == 201, response.content
    peer = response.json()
    assert peer["config"] is None and peer["qr"] is None
    assert ipaddress.ip_address(peer["ipv4"]) in ipaddress.ip_network("100.96.0.0/16")
    assert ipaddress.ip_address(peer["ipv6"]).version == 6
    config = client.get(f"{API}/peers/{peer['id']}/config")
    assert config.status_code == 200 and config["Content-Type"].startswith("text/plain")
    text = config.content.decode()
    assert "# PrivateKey = " in text and private not in text
    assert f"Address = {peer['ipv4']}/32, {peer['ipv6']}/128" in text
    assert "Endpoint = 127.0.0.1:51820" in text
    qr = client.get(f"{API}/peers/{peer['id']}/config", {"format": "qr"})
    assert qr["Content-Type"] == "image/png" and qr.content.startswith(b"\x89PNG")


def test_a_generated_private_key_is_shown_once_and_never_stored(alice):
    client = client_for(alice)
    response = post(client, "peers", {"name": "phone", "generate_key": True, "preshared_key": True})
    assert response.status_code == 201
    peer = response.json()
    private = next(line.split(" = ", 1)[1] for line in peer["config"].splitlines() if line.startswith("PrivateKey"))
    assert wg_pubkey(private) == peer["public_key"] == keys.public_key(private)
    assert peer["qr"].startswith("data:image/png;base64,")
    assert "PresharedKey = " in peer["config"]
    stored = Peer.objects.get(pk=peer["id"])
    assert private not in str([getattr(stored, f.name) for f in Peer._meta.fields])
    assert "PresharedKey" not in stored.preshared_key_sealed and stored.preshared_key_sealed.startswith("sb1:")
    again = client.get(f"{API}/peers/{peer['id']}/config").content.decode()
    assert private not in again and "# PrivateKey" in again


@pytest.mark.parametrize(
    "body, field, code",
    [
        ({"name": "x", "public_key": "not-a-key"}, "public_key", "invalid_key"),
        ({"name": "x", "public_key": "A" * 43 + "="}, "public_key", "invalid_key"),
        ({"name": "x", "public_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}, "public_key", "invalid_key"),
        ({"name": "x"}, "public_key", "required"),
        ({"name": "x", "generate_key": True, "public_key": "4Ybx9XxxcT5AYEP7Q8K1TiYzDg5Vlhxm4PrChZ4jAwA="}, "public_key", "ambiguous"),
        ({"name": "x", "generate_key": True, "keepalive": 100000}, "keepalive", "out_of_range"),
        ({"name": "x", "generate_key": True, "keepalive": -5}, "keepalive", "out_of_range"),
        ({"name": "x", "generate_key": True, "allowed_ips": ["0.0.0.0/0"]}, "allowed_ips", "outside_network"),
        ({"name": "x", "generate_key": True, "allowed_ips": ["10.0.0.0/8"]}, "allowed_ips", "outside_network"),
        ({"name": "x", "generate_key": True, "allowed_ips": ["banana"]}, "allowed_ips", "invalid"),
        ({"name": "x", "generate_key": True, "expires_at": "2001-01-01T00:00:00Z"}, "expires_at", "in_past"),
        ({"name": "  ", "generate_key": True}, "name", "required"),
    ],
)
def test_bad_input_is_refused_naming_the_field_and_creates_nothing(alice, body, field, code):
    response = post(client_for(alice), "peers", body)
    assert response.status_code == 400, response.content
    assert field in response.json() and response.json()["code"] == code
    assert not Peer.objects.exists() and not AddressLease.objects.exists()


def test_another_users_peer_answers_404_everywhere(alice, bob):
    peer = post(client_for(alice), "peers", {"name": "mine", "generate_key": True}).json()
    eve = client_for(bob)
    assert eve.get(f"{API}/peers/{peer['id']}").status_code == 404
    assert eve.get(f"{API}/peers/{peer['id']}/config").status_code == 404
    assert post(eve, f"peers/{peer['id']}/rotate", {"generate_key": True}).status_code == 404
    assert eve.delete(f"{API}/peers/{peer['id']}").status_code == 404
    assert eve.get(f"{API}/peers").json()["results"] == []
    assert Peer.objects.get(pk=peer["id"]).status == "active"


def test_rotation_bumps_the_epoch_and_replaces_the_key(alice):
    client = client_for(alice)
    peer = post(client, "peers", {"name": "rot", "generate_key": True}).json()
    new_private, new_public = keys.generate_keypair()
    rotated = post(client, f"peers/{peer['id']}/rotate", {"public_key": new_public})
    assert rotated.status_code == 200
    assert rotated.json()["key_epoch"] == 2 and rotated.json()["public_key"] == new_public
    assert rotated.json()["rotated_at"] is not None
    assert post(client, f"peers/{peer['id']}/rotate", {"public_key": new_public}).json()["code"] == "unchanged"
    generated = post(client, f"peers/{peer['id']}/rotate", {"generate_key": True}).json()
    assert generated["key_epoch"] == 3 and "PrivateKey = " in generated["config"]


def test_revoking_releases_addresses_only_after_the_cooldown(alice):
    client = client_for(alice)
    first = post(client, "peers", {"name": "one", "generate_key": True}).json()
    assert client.delete(f"{API}/peers/{first['id']}").status_code == 204
    assert Peer.objects.get(pk=first["id"]).status == "revoked"
    assert client.get(f"{API}/peers/{first['id']}/config").status_code == 409
    second = post(client, "peers", {"name": "two", "generate_key": True}).json()
    assert second["ipv4"] != first["ipv4"], "a released address waits out its cool-down"
    MeshNetwork.objects.update(address_cooldown_seconds=0)
    third = post(client, "peers", {"name": "three", "generate_key": True}).json()
    assert third["ipv4"] == first["ipv4"], "after the cool-down the address is reused"


def test_a_duplicate_key_or_name_is_a_conflict(alice, bob):
    _, public = keys.generate_keypair()
    assert post(client_for(alice), "peers", {"name": "a", "public_key": public}).status_code == 201
    assert post(client_for(bob), "peers", {"name": "b", "public_key": public}).json()["code"] == "key_in_use"
    assert post(client_for(alice), "peers", {"name": "a", "generate_key": True}).json()["code"] == "duplicate_name"


def test_the_per_user_quota_is_enforced(alice, settings):
    settings.MESH_PEER_QUOTA = 2
    client = client_for(alice)
    for n in range(2):
        assert post(client, "peers", {"name": f"p{n}", "generate_key": True}).status_code == 201
    over = post(client, "peers", {"name": "p2", "generate_key": True})
    assert over.status_code == 409 and over.json()["code"] == "quota"


def test_an_exhausted_pool_answers_409_and_creates_nothing(alice, operator):
    network_create(actor=operator, name="tiny", ipv4_cidr="100.127.0.0/30", ipv6_prefix="fd99::/64")
    client = client_for(alice)
    assert post(client, "peers", {"name": "only", "generate_key": True, "network": "tiny"}).status_code == 201
    full = post(client, "peers", {"name": "extra", "generate_key": True, "network": "tiny"})
    assert full.status_code == 409 and full.json()["code"] == "pool_exhausted"
    assert Peer.objects.filter(network__name="tiny").count() == 1


def test_reserved_addresses_are_never_handed_out(alice, operator):
    from mesh.services import address_reserve

    network = network_create(actor=operator, name="res", ipv4_cidr="100.126.0.0/29", ipv6_prefix="fd98::/64")
    address_reserve(actor=operator, network_id=network.pk, address="100.126.0.2", note="printer")
    peer = post(client_for(alice), "peers", {"name": "p", "generate_key": True, "network": "res"}).json()
    assert peer["ipv4"] == "100.126.0.3"


@pytest.mark.parametrize(
    "body, field, code, status",
    [
        ({"name": "dup", "ipv4_cidr": "100.96.1.0/24", "ipv6_prefix": "fd11::/64"}, "ipv4_cidr", "overlap", 409),
        ({"name": "dup6", "ipv4_cidr": "100.97.0.0/24", "ipv6_prefix": "fd42:1f5a:7c00::/80"}, "ipv6_prefix", "overlap", 409),
        ({"name": "gua", "ipv4_cidr": "100.98.0.0/24", "ipv6_prefix": "2001:db8::/64"}, "ipv6_prefix", "not_ula", 400),
        ({"name": "host", "ipv4_cidr": "100.98.0.1/24", "ipv6_prefix": "fd12::/64"}, "ipv4_cidr", "invalid", 400),
        ({"name": "small", "ipv4_cidr": "100.98.0.0/31", "ipv6_prefix": "fd12::/64"}, "ipv4_cidr", "too_small", 400),
    ],
)
def test_networks_that_overlap_or_are_malformed_are_refused(operator, body, field, code, status):
    client = client_for(operator)
    assert post(client, "peers", {"name": "seed", "generate_key": True}).status_code == 201  # makes the default network
    response = post(client, "networks", body)
    assert response.status_code == status, response.content
    assert field in response.json() and response.json()["code"] == code
    assert not MeshNetwork.objects.filter(name=body["name"]).exists()


def test_only_operators_create_networks_and_read_the_gateway_config(alice, operator, operator_session):
    body = {"name": "ops", "ipv4_cidr": "100.99.0.0/24", "ipv6_prefix": "fd13::/64"}
    assert post(client_for(alice), "networks", body).status_code == 403
    assert client_for(alice).get(f"{API}/gateway/config").status_code == 403
    assert post(client_for(operator), "networks", body).status_code == 201
    post(client_for(alice), "peers", {"name": "gw-peer", "generate_key": True, "network": "ops"})
    config = operator_session.get(f"{API}/gateway/config", {"network": "ops"}).content.decode()
    assert config.startswith("[Interface]\nPrivateKey = ") and config.count("[Peer]") == 1


def test_concurrent_creation_never_hands_out_one_address_twice(transactional_db):
    users = [User.objects.create_user(display_name=f"u{i}", signup_state="active") for i in range(6)]
    outcomes = race([lambda u=u: peer_create(actor=u, name="racer", generate_key=True) for u in users])
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    v4 = list(Peer.objects.values_list("ipv4", flat=True))
    v6 = list(Peer.objects.values_list("ipv6", flat=True))
    assert len(v4) == len(set(v4)) == len(users) and len(set(v6)) == len(users)


def test_two_users_racing_with_one_public_key_get_one_peer_and_one_conflict(transactional_db):
    from infrasim_site.errors import Conflict

    users = [User.objects.create_user(display_name=f"k{i}", signup_state="active") for i in range(2)]
    _, public = keys.generate_keypair()
    outcomes = race([lambda u=u: peer_create(actor=u, name="same-key", public_key=public) for u in users])
    conflicts = [o for o in outcomes if isinstance(o, Conflict)]
    assert len(conflicts) == 1 and conflicts[0].code == "key_in_use", outcomes
    assert Peer.objects.filter(public_key=public).count() == 1
    assert AddressLease.objects.filter(peer__isnull=False).count() == 2, "only the winner holds addresses"


def test_a_peer_says_when_the_gateway_holds_its_latest_change(alice):
    client = client_for(alice)
    peer = post(client, "peers", {"name": "sync", "generate_key": True}).json()
    assert peer["gateway_synced"] is False, "no gateway sync has run in this test"
    MeshNetwork.objects.update(applied_generation=F("generation"))
    assert client.get(f"{API}/peers/{peer['id']}").json()["gateway_synced"] is True
    rotated = post(client, f"peers/{peer['id']}/rotate", {"generate_key": True}).json()
    assert rotated["gateway_synced"] is False


@pytest.mark.parametrize(
    "name",
    ["evil\u202etxt.exe", "zero\u200bwidth", "private\ue000use", "non\ufffecharacter", "new\x00line"],
)
def test_a_peer_name_with_invisible_or_reordering_characters_is_refused(alice, name):
    response = post(client_for(alice), "peers", {"name": name, "generate_key": True})
    assert response.status_code == 400, response.content
    assert "name" in response.json()
    assert not Peer.objects.exists()


def test_users_see_no_gateway_internals_and_operators_do(alice, operator):
    post(client_for(alice), "peers", {"name": "p", "generate_key": True})
    MeshNetwork.objects.update(last_sync_error="wg: secret detail of the gateway host")
    internals = {"last_sync_error", "generation", "applied_generation", "applied_at", "interface", "gateway_queue",
                 "gateway_netns"}
    mine = client_for(alice).get(f"{API}/networks").json()["results"][0]
    assert not internals & set(mine), mine
    assert "secret detail" not in str(mine)
    assert mine["name"] == "default" and mine["gateway_synced"] is False
    theirs = client_for(operator).get(f"{API}/networks").json()["results"][0]
    assert internals <= set(theirs)
    assert theirs["last_sync_error"].startswith("wg:")


def test_reading_on_a_fresh_database_creates_nothing(alice, operator, operator_session):
    from forensics.models import LedgerEntry

    events_before = LedgerEntry.objects.count()  # the operator's sign-up
    assert client_for(alice).get(f"{API}/networks").json()["results"] == []
    assert client_for(alice).get(f"{API}/peers").json()["results"] == []
    assert client_for(alice).get("/mesh/card").status_code == 200
    assert operator_session.get(f"{API}/gateway/config").status_code == 404
    assert not MeshNetwork.objects.exists() and LedgerEntry.objects.count() == events_before


def test_responses_with_keys_or_configs_are_never_cached(alice, operator, operator_session):
    client = client_for(alice)
    created = post(client, "peers", {"name": "My Laptop", "generate_key": True})
    peer = created.json()
    rotated = post(client, f"peers/{peer['id']}/rotate", {"generate_key": True})
    config = client.get(f"{API}/peers/{peer['id']}/config")
    qr = client.get(f"{API}/peers/{peer['id']}/config", {"format": "qr"})
    gateway = operator_session.get(f"{API}/gateway/config")
    for response in (created, rotated, config, qr, gateway):
        assert response.status_code in (200, 201), response.content
        directives = {d.strip() for d in response["Cache-Control"].split(",")}
        assert {"no-store", "private"} <= directives, response["Cache-Control"]
    assert config["Content-Disposition"] == 'attachment; filename="infrasim-my-laptop.conf"'


def test_the_gateway_config_read_is_recorded_in_the_ledger(operator, operator_session):
    from forensics.models import LedgerEntry

    post(client_for(operator), "peers", {"name": "p", "generate_key": True})
    network = MeshNetwork.objects.get()
    assert operator_session.get(f"{API}/gateway/config").status_code == 200
    entry = LedgerEntry.objects.get(kind="mesh.gateway.config_read")
    assert entry.subject == f"mesh_network:{network.pk}" and entry.actor == f"operator:{operator.pk}"


def test_the_peer_list_filters_by_status_and_network(alice, operator):
    client = client_for(alice)
    network_create(actor=operator, name="lab", ipv4_cidr="100.125.0.0/24", ipv6_prefix="fd97::/64")
    kept = post(client, "peers", {"name": "kept", "generate_key": True}).json()
    gone = post(client, "peers", {"name": "gone", "generate_key": True}).json()
    lab = post(client, "peers", {"name": "lab", "generate_key": True, "network": "lab"}).json()
    client.delete(f"{API}/peers/{gone['id']}")

    def names(**params):
        return [p["name"] for p in client.get(f"{API}/peers", params).json()["results"]]

    assert names() == ["kept", "lab"]
    assert names(include_ended="true") == ["kept", "gone", "lab"]
    assert names(status="revoked") == ["gone"]
    assert names(network="lab") == [lab["name"]]
    assert names(network="default", include_ended="1") == [kept["name"], gone["name"]]
    bad = client.get(f"{API}/peers", {"status": "sleeping"})
    assert bad.status_code == 400 and "status" in bad.json()


def test_reading_the_gateway_key_needs_a_recent_passkey_check(operator, operator_session):
    from identity.sessions import CHECKED_AT_KEY
    from tests.passkey_api import bearer, create_token, sign_in

    post(client_for(operator), "peers", {"name": "p", "generate_key": True})
    assert client_for(operator).get(f"{API}/gateway/config").status_code == 403, "a session without a passkey"
    token = create_token(operator_session, "ops", scope="write")["token"]
    assert Client().get(f"{API}/gateway/config", **bearer(token)).status_code == 403, "no token exports secrets"
    session = operator_session.session
    session[CHECKED_AT_KEY] -= 11 * 60
    session.save()
    stale = operator_session.get(f"{API}/gateway/config")
    assert stale.status_code == 403 and stale.json()["code"] == "passkey_recheck_required"
    assert sign_in(operator_session, operator_session.device).status_code == 200
    assert operator_session.get(f"{API}/gateway/config").status_code == 200
