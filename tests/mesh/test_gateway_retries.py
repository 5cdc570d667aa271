"""A gateway that cannot be reached is tried again with backoff, by the real
worker, until it answers: no further change is needed for it to catch up."""

from __future__ import annotations

import time

from mesh import services
from mesh.models import MeshNetwork
from mesh.wireguard_go import WireGuardGo
from tests.mesh import netns


def wait_for(check, *, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        time.sleep(0.05)


def test_a_sync_that_failed_is_retried_until_the_gateway_answers(topology, worker):
    ifname = f"wg{topology.token}p9"  # named like the topology's, so a crashed run's leftovers are swept
    network = services.network_create(
        actor=None, name=f"late-{topology.token}", ipv4_cidr=str(topology.v4_pool), ipv6_prefix=str(topology.v6_pool),
        endpoint=topology.endpoint, listen_port=netns.LISTEN_PORT, interface=ifname,
        gateway_netns=topology.gateway_netns,
    )

    def fresh() -> MeshNetwork:
        return MeshNetwork.objects.get(pk=network.pk)

    wait_for(lambda: fresh().last_sync_error, timeout=10, what="the failed sync was not recorded")
    assert not fresh().in_sync
    gateway = WireGuardGo(ifname, netns=topology.gateway_netns).start()
    try:
        # Retries come after 1, 2, 4, 8 and 16 s; the next one finds the interface.
        wait_for(lambda: fresh().in_sync, timeout=25, what=f"never caught up: {fresh().last_sync_error}")
        assert fresh().last_sync_error == ""
        shown = netns.run("ip", "netns", "exec", topology.gateway_netns, "wg", "show", ifname, "listen-port").stdout
        assert shown.strip() == str(netns.LISTEN_PORT)
    finally:
        gateway.stop()
