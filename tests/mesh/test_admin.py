import pytest
from django.test import Client

from forensics.models import LedgerEntry
from identity.models import User
from mesh.models import MeshNetwork, Peer
from mesh.services import network_create, peer_create


@pytest.fixture()
def operator_client(db):
    operator = User.objects.create_user(display_name="Olga", is_staff=True, is_superuser=True, signup_state="active")
    client = Client()
    client.force_login(operator, backend="django_otp_webauthn.backends.WebAuthnBackend")
    return client


def add_network(client, **fields):
    data = {
        "name": "branch", "ipv4_cidr": "100.100.0.0/24", "ipv6_prefix": "fd77::/64", "endpoint": "vpn.example.com:51821",
        "listen_port": 51821, "interface": "wg-branch", "gateway_queue": "mesh", "default_keepalive": 25,
        "peer_quota": 5, "address_cooldown_seconds": 60, **fields,
    }
    return client.post("/admin/mesh/meshnetwork/add/", data)


def test_operator_adds_a_network_in_the_admin_with_a_sealed_gateway_key(operator_client):
    response = add_network(operator_client)
    assert response.status_code == 302, response.content.decode()[-2000:]
    network = MeshNetwork.objects.get(name="branch")
    assert network.gateway_private_key_sealed.startswith("sb1:") and len(network.gateway_public_key) == 44
    assert network.interface == "wg-branch" and network.listen_port == 51821
    assert LedgerEntry.objects.filter(kind="mesh.network.created", subject=f"mesh_network:{network.pk}").exists()
    page = operator_client.get(f"/admin/mesh/meshnetwork/{network.pk}/change/").content.decode()
    assert "gateway_private_key_sealed" not in page and network.gateway_private_key_sealed not in page


def test_an_overlapping_network_is_a_form_error_not_a_crash(operator_client):
    network_create(actor=None, name="first", ipv4_cidr="100.100.0.0/16", ipv6_prefix="fd78::/64")
    response = add_network(operator_client, name="second")
    assert response.status_code == 200
    assert "overlaps network" in response.content.decode()
    assert not MeshNetwork.objects.filter(name="second").exists()


def test_operator_revokes_a_peer_and_resyncs_from_the_admin(operator_client):
    user = User.objects.create_user(display_name="Pat", signup_state="active")
    peer = peer_create(actor=user, name="pc", generate_key=True).peer
    network = peer.network
    before = MeshNetwork.objects.get(pk=network.pk).generation
    operator_client.post("/admin/mesh/peer/", {"action": "revoke", "_selected_action": [peer.pk]})
    assert Peer.objects.get(pk=peer.pk).status == "revoked"
    operator_client.post("/admin/mesh/meshnetwork/", {"action": "resync_gateway", "_selected_action": [network.pk]})
    assert MeshNetwork.objects.get(pk=network.pk).generation == before + 2
    assert operator_client.get("/admin/mesh/addresslease/").status_code == 200
