
from forensics.models import LedgerEntry
from identity.models import User
from mesh.models import MeshNetwork, Peer
from mesh.services import network_create, peer_create


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


def change_network(client, network, **fields):
    data = {
        "name": network.name, "endpoint": network.endpoint, "listen_port": network.listen_port,
        "interface": network.interface, "gateway_netns": network.gateway_netns, "gateway_queue": network.gateway_queue,
        "default_keepalive": network.default_keepalive, "peer_quota": network.peer_quota,
        "address_cooldown_seconds": network.address_cooldown_seconds,
        # The read-only inline of the network's rules posts its management form.
        "rules-TOTAL_FORMS": 0, "rules-INITIAL_FORMS": 0,
        **fields,
    }
    return client.post(f"/admin/mesh/meshnetwork/{network.pk}/change/", data)


def test_editing_a_network_in_the_admin_is_recorded_and_resyncs_the_gateway(operator_client):
    network = network_create(actor=None, name="edit", ipv4_cidr="100.101.0.0/24", ipv6_prefix="fd79::/64")
    before = MeshNetwork.objects.get(pk=network.pk).generation
    response = change_network(operator_client, network, peer_quota=7, endpoint="vpn2.example.com:51820")
    assert response.status_code == 302, response.content.decode()[-2000:]
    network.refresh_from_db()
    assert network.peer_quota == 7 and network.endpoint == "vpn2.example.com:51820"
    assert network.generation == before + 1
    entry = LedgerEntry.objects.get(kind="mesh.network.updated", subject=f"mesh_network:{network.pk}")
    assert entry.payload["changes"] == {"peer_quota": [20, 7], "endpoint": ["127.0.0.1:51820", "vpn2.example.com:51820"]}


def test_a_bad_interface_or_namespace_is_a_form_error_and_changes_nothing(operator_client):
    network = network_create(actor=None, name="bad", ipv4_cidr="100.102.0.0/24", ipv6_prefix="fd80::/64")
    for fields, message in (({"interface": "wg 0;drop"}, "interface name"), ({"gateway_netns": "../etc"}, "namespace")):
        response = change_network(operator_client, network, **fields)
        assert response.status_code == 200
        assert message in response.content.decode()
    assert MeshNetwork.objects.get(pk=network.pk).interface == network.interface
    assert not LedgerEntry.objects.filter(kind="mesh.network.updated").exists()


def test_operator_adds_a_network_rule_in_the_admin_and_a_bad_one_is_a_form_error(operator_client):
    network = network_create(actor=None, name="rules", ipv4_cidr="100.103.0.0/24", ipv6_prefix="fd81::/64")
    bad = operator_client.post("/admin/mesh/networkrule/add/", {"network": network.pk, "source": "10.0.0.0/8"})
    assert bad.status_code == 200 and "outside the network" in bad.content.decode()
    good = operator_client.post("/admin/mesh/networkrule/add/", {"network": network.pk, "source": "100.103.0.0/25"})
    assert good.status_code == 302
    assert network.rules.get().source == "100.103.0.0/25"
    assert LedgerEntry.objects.filter(kind="mesh.network.rule_added").exists()


def test_rotating_to_a_generated_key_shows_the_config_once_after_a_passkey_check(db):
    from identity.sessions import CHECKED_AT_KEY
    from tests.people import person, signed_in_person

    operator = signed_in_person("Olga", operator=True)
    owner = person("branch-office")
    peer = peer_create(actor=owner, name="branch router", generate_key=True).peer
    action = {"action": "rotate_generated", "_selected_action": [peer.pk]}

    session = operator.session
    session[CHECKED_AT_KEY] -= 11 * 60
    session.save()
    refused = operator.post("/admin/mesh/peer/", action, follow=True)
    assert "Confirm with your passkey first" in refused.content.decode()
    assert Peer.objects.get(pk=peer.pk).key_epoch == 1

    from tests.passkey_api import sign_in

    assert sign_in(operator, operator.device).status_code == 200
    shown = operator.post("/admin/mesh/peer/", action)
    assert shown.status_code == 200 and "no-store" in shown["Cache-Control"]
    page = shown.content.decode()
    assert "PrivateKey = " in page and "branch router (key #2)" in page
    assert "PrivateKey" not in str(shown.cookies), "the key never rides in a cookie"
    assert Peer.objects.get(pk=peer.pk).key_epoch == 2
