"""Fixtures for real WireGuard tests: namespaces, wireguard-go, and a mesh
network whose gateway is the topology's gateway interface."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass

import pytest

from tests.mesh import netns


@pytest.fixture(scope="session")
def netns_ready():
    if os.geteuid() != 0:
        pytest.fail("the mesh tunnel tests create network namespaces and need root")
    missing = netns.tools_missing()
    if missing:
        pytest.fail(f"missing tools: {', '.join(missing)} (Debian: iproute2 wireguard-tools wireguard-go iputils-ping)")
    netns.sweep_stale()


@pytest.fixture()
def topology(netns_ready):
    """An underlay, a gateway namespace running wireguard-go, and room for peers.
    The pools are drawn at random so that logs of parallel runs stay apart."""
    third = random.randrange(256)
    with netns.Topology(v4_pool=f"100.96.{third}.0/24", v6_pool=f"fd5e:1a{third:02x}:7c00::/64") as topo:
        yield topo


@dataclass
class Mesh:
    topology: netns.Topology
    network: object  # mesh.models.MeshNetwork
    user: object  # identity.models.User

    def wait_applied(self, timeout: float = 10) -> float:
        """Wait until the gateway holds the database's current generation;
        returns how long that took."""
        from mesh.models import MeshNetwork

        start = time.monotonic()
        while True:
            network = MeshNetwork.objects.get(pk=self.network.pk)
            if network.in_sync:
                self.network = network
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise AssertionError(
                    f"gateway stuck at generation {network.applied_generation} of {network.generation}: "
                    f"{network.last_sync_error or 'no sync error recorded'}"
                )
            time.sleep(0.01)


@pytest.fixture()
def mesh(topology, worker):
    """A MeshNetwork made through the service, synced by the real worker onto
    the topology's gateway interface."""
    from identity.models import User
    from mesh import services

    network = services.network_create(
        actor=None,
        name=f"mesh-{topology.token}",
        ipv4_cidr=str(topology.v4_pool),
        ipv6_prefix=str(topology.v6_pool),
        endpoint=topology.endpoint,
        listen_port=netns.LISTEN_PORT,
        interface=topology.gateway_interface,
        gateway_netns=topology.gateway_netns,
    )
    user = User.objects.create_user(display_name="Wendy Wireguard", signup_state="active")
    m = Mesh(topology, network, user)
    m.wait_applied()
    return m
