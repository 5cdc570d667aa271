"""The pools and the gateway's own address, from an unsaved network."""

import ipaddress

import pytest

from mesh.ipam import gateway_address, pool
from mesh.models import MeshNetwork


@pytest.fixture()
def network():
    return MeshNetwork(name="lab", ipv4_cidr="100.96.0.0/16", ipv6_prefix="fd42:1f5a:7c00::/64")


def test_each_family_has_its_own_pool(network):
    assert pool(network, 4) == ipaddress.ip_network("100.96.0.0/16")
    assert pool(network, 6) == ipaddress.ip_network("fd42:1f5a:7c00::/64")


def test_the_gateway_takes_the_first_host_of_each_pool(network):
    assert str(gateway_address(network, 4)) == "100.96.0.1"
    assert str(gateway_address(network, 6)) == "fd42:1f5a:7c00::1"


def test_a_small_pool_still_leaves_the_network_address_alone():
    network = MeshNetwork(name="tiny", ipv4_cidr="10.9.8.0/30", ipv6_prefix="fd00::/126")
    assert str(gateway_address(network, 4)) == "10.9.8.1"
    assert [str(a) for a in pool(network, 4).hosts()] == ["10.9.8.1", "10.9.8.2"]
