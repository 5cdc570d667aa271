"""Sharing a peer with a handle, and operators' network rules, through the API."""

import pytest

from forensics.models import LedgerEntry
from mesh.models import MeshNetwork, PeerShare
from tests.people import client_for, person

API = "/api/meshnet/mesh"


def post(client, path, data=None):
    return client.post(f"{API}/{path}", data or {}, content_type="application/json")


@pytest.fixture()
def alice(db):
    return person("alice")


@pytest.fixture()
def bob(db):
    return person("bob")


@pytest.fixture()
def operator(db):
    return person("olga", operator=True)


@pytest.fixture()
def laptop(alice):
    return post(client_for(alice), "peers", {"name": "laptop", "generate_key": True}).json()


def generation() -> int:
    return MeshNetwork.objects.get().generation


def test_owner_shares_lists_and_withdraws_and_each_change_resyncs_and_is_recorded(alice, bob, laptop):
    client = client_for(alice)
    before = generation()
    created = post(client, f"peers/{laptop['id']}/shares", {"handle": "Bob"})
    assert created.status_code == 201, created.content
    assert created.json()["handle"] == "bob"
    assert generation() == before + 1
    assert [s["handle"] for s in client.get(f"{API}/peers/{laptop['id']}/shares").json()] == ["bob"]
    assert LedgerEntry.objects.filter(kind="mesh.peer.shared", subject=f"mesh_peer:{laptop['id']}").exists()

    assert client.delete(f"{API}/peers/{laptop['id']}/shares/bob").status_code == 204
    assert generation() == before + 2
    assert client.get(f"{API}/peers/{laptop['id']}/shares").json() == []
    assert LedgerEntry.objects.filter(kind="mesh.peer.unshared", subject=f"mesh_peer:{laptop['id']}").exists()


def test_sharing_with_an_unknown_handle_is_404_naming_the_handle(alice, laptop):
    response = post(client_for(alice), f"peers/{laptop['id']}/shares", {"handle": "nobody"})
    assert response.status_code == 404 and "handle" in response.json()
    assert not PeerShare.objects.exists()


def test_sharing_with_yourself_is_400(alice, laptop):
    response = post(client_for(alice), f"peers/{laptop['id']}/shares", {"handle": "alice"})
    assert response.status_code == 400 and "handle" in response.json()


def test_only_the_owner_or_an_operator_shares_and_another_users_peer_is_404(alice, bob, operator, laptop):
    eve = client_for(bob)
    assert post(eve, f"peers/{laptop['id']}/shares", {"handle": "bob"}).status_code == 404
    assert eve.get(f"{API}/peers/{laptop['id']}/shares").status_code == 404
    assert post(client_for(operator), f"peers/{laptop['id']}/shares", {"handle": "bob"}).status_code == 201
    assert eve.delete(f"{API}/peers/{laptop['id']}/shares/bob").status_code == 404
    assert PeerShare.objects.count() == 1


def test_sharing_twice_is_a_conflict_and_withdrawing_a_share_that_is_not_there_is_404(alice, bob, laptop):
    client = client_for(alice)
    assert post(client, f"peers/{laptop['id']}/shares", {"handle": "bob"}).status_code == 201
    assert post(client, f"peers/{laptop['id']}/shares", {"handle": "bob"}).status_code == 409
    assert client.delete(f"{API}/peers/{laptop['id']}/shares/bob").status_code == 204
    missing = client.delete(f"{API}/peers/{laptop['id']}/shares/bob")
    assert missing.status_code == 404 and "handle" in missing.json()


def test_operators_add_and_remove_network_rules_and_users_cannot(alice, operator, laptop):
    network = MeshNetwork.objects.get()
    assert post(client_for(alice), f"networks/{network.pk}/rules", {}).status_code == 403
    assert client_for(alice).get(f"{API}/networks/{network.pk}/rules").status_code == 403
    ops = client_for(operator)
    before = generation()
    rule = post(ops, f"networks/{network.pk}/rules", {"source": "100.96.0.2/32", "destination": "100.96.0.3"})
    assert rule.status_code == 201, rule.content
    assert rule.json()["destination"] == "100.96.0.3/32"
    assert generation() == before + 1
    assert [r["id"] for r in ops.get(f"{API}/networks/{network.pk}/rules").json()] == [rule.json()["id"]]
    assert ops.delete(f"{API}/networks/{network.pk}/rules/{rule.json()['id']}").status_code == 204
    assert generation() == before + 2
    kinds = set(LedgerEntry.objects.filter(subject=f"mesh_network:{network.pk}").values_list("kind", flat=True))
    assert {"mesh.network.rule_added", "mesh.network.rule_removed"} <= kinds


@pytest.mark.parametrize(
    "body, field, code",
    [
        ({"source": "10.0.0.0/8"}, "source", "outside_network"),
        ({"destination": "banana"}, "destination", "invalid"),
        ({"source": "100.96.0.2/32", "destination": "fd42:1f5a:7c00::2/128"}, "destination", "wrong_family"),
    ],
)
def test_a_bad_network_rule_is_400_naming_the_field(operator, laptop, body, field, code):
    network = MeshNetwork.objects.get()
    response = post(client_for(operator), f"networks/{network.pk}/rules", body)
    assert response.status_code == 400, response.content
    assert field in response.json() and response.json()["code"] == code
    assert not network.rules.exists()
