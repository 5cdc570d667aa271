"""Tenant isolation on a real gateway: wireguard-go in a namespace, the nft
table InfraSim renders, applied by the real worker, and real pings.

Alice's and Bob's devices dial one gateway. By default each reaches the
gateway and its own owner's devices only; a share lets the grantee's devices
reach the shared one; an operator's rule opens more.
"""

from __future__ import annotations

from mesh import services
from mesh.models import MeshNetwork
from tests.people import person
from tests.mesh.test_tunnels import Up, traffic_stop_latency


def gateway_addresses(mesh) -> list[str]:
    return [x.split("/")[0] for x in (mesh.topology.gateway_v4, mesh.topology.gateway_v6)]


def reaches(src: Up, dst: Up) -> bool:
    """One ping per family; True only if both answer, False only if neither does."""
    answers = [src.node.ping(address, count=2, interval=0.05, wait=0.5).received > 0 for address in (dst.v4, dst.v6)]
    assert len(set(answers)) == 1, f"v4 and v6 disagree: {answers}"
    return answers[0]


def devices(mesh):
    """Alice's laptop and phone, Bob's desktop: all up and talking to the gateway."""
    alice, bob = person("alice"), person("bob")
    laptop = Up(mesh, "laptop", owner=alice)
    phone = Up(mesh, "phone", owner=alice)
    desktop = Up(mesh, "desktop", owner=bob)
    mesh.wait_applied()
    for up in (laptop, phone, desktop):
        up.bring_up()
        for address in gateway_addresses(mesh):
            up.node.ping_until_ok(address)
    return alice, bob, laptop, phone, desktop


def test_a_peer_reaches_its_owners_peers_and_the_gateway_but_no_one_elses(mesh):
    alice, bob, laptop, phone, desktop = devices(mesh)
    assert reaches(laptop, phone) and reaches(phone, laptop)
    assert not reaches(desktop, laptop)
    assert not reaches(laptop, desktop)
    for up in (laptop, phone, desktop):
        for address in gateway_addresses(mesh):
            assert up.node.ping(address, count=2, interval=0.05).received == 2


def test_a_share_opens_the_peer_to_the_grantee_and_withdrawing_it_closes_it_within_a_second(mesh, record_property):
    alice, bob, laptop, phone, desktop = devices(mesh)
    assert not reaches(desktop, laptop)

    services.peer_share_create(actor=alice, peer_id=laptop.peer.pk, handle="bob")
    mesh.wait_applied()
    assert reaches(desktop, laptop), "the grantee's peer reaches the shared peer"
    assert not reaches(desktop, phone), "...and only that one"
    assert not reaches(laptop, desktop), "the shared peer opens no connection to the grantee"

    latency, seq, result = traffic_stop_latency(
        desktop, laptop.v4, lambda: services.peer_share_delete(actor=alice, peer_id=laptop.peer.pk, handle="bob")
    )
    record_property("share_withdrawal_latency_s", round(latency, 3))
    print(f"withdrawal: traffic stopped {latency * 1000:.0f} ms after peer_share_delete returned (icmp_seq {seq})")
    assert latency < 1.0, result.output
    mesh.wait_applied()
    assert not reaches(desktop, laptop)
    assert reaches(phone, laptop), "alice's own peers are not affected"


def test_an_operators_allow_all_rule_lets_every_peer_reach_every_other(mesh):
    alice, bob, laptop, phone, desktop = devices(mesh)
    operator = person("olga", operator=True)
    rule = services.network_rule_create(actor=operator, network_id=mesh.network.pk)
    mesh.wait_applied()
    assert reaches(desktop, laptop) and reaches(laptop, desktop)
    services.network_rule_delete(actor=operator, rule_id=rule.pk)
    mesh.wait_applied()
    assert not reaches(desktop, laptop)


def test_an_operators_rule_from_one_peer_to_another_opens_only_that_direction(mesh):
    alice, bob, laptop, phone, desktop = devices(mesh)
    operator = person("olga", operator=True)
    services.network_rule_create(
        actor=operator, network_id=mesh.network.pk, source=f"{desktop.v4}/32", destination=f"{laptop.v4}/32"
    )
    mesh.wait_applied()
    assert desktop.node.ping(laptop.v4, count=2, interval=0.05).received == 2
    assert desktop.node.ping(laptop.v6, count=2, interval=0.05, wait=0.5).received == 0, "the rule was for IPv4"
    assert desktop.node.ping(phone.v4, count=2, interval=0.05, wait=0.5).received == 0
    assert laptop.node.ping(desktop.v4, count=2, interval=0.05, wait=0.5).received == 0


def test_the_forced_resync_repairs_a_policy_removed_by_hand(mesh):
    alice, bob, laptop, phone, desktop = devices(mesh)
    gateway_ns = mesh.topology.gateway.ns
    table = f"infrasim-{mesh.topology.gateway_interface}"
    gateway_ns.exec("nft", "delete", "table", "inet", table)
    assert reaches(desktop, laptop), "without the table the gateway forwards everything"
    network = services.gateway_sync(network_id=mesh.network.pk, force=True)
    assert network.applied_generation == MeshNetwork.objects.get(pk=mesh.network.pk).generation
    assert gateway_ns.exec("nft", "list", "table", "inet", table).returncode == 0
    assert not reaches(desktop, laptop)
    assert reaches(laptop, phone)
