"""Address allocation: one IPv4 and one IPv6 address per peer.

The unique (network, address) constraint on AddressLease decides every race;
this module only picks a candidate and lets the database say no. The first
host of each pool is the gateway's.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta
from itertools import islice

from django.db import IntegrityError, transaction
from django.db.models import Q

from mesh.models import AddressLease, MeshNetwork, Peer


class PoolExhausted(Exception):
    pass


def pool(network: MeshNetwork, family: int):
    return ipaddress.ip_network(network.ipv4_cidr if family == 4 else network.ipv6_prefix)


def gateway_address(network: MeshNetwork, family: int):
    return next(pool(network, family).hosts())


def _unavailable(network: MeshNetwork, family: int, now: datetime) -> set[str]:
    cutoff = now - timedelta(seconds=network.address_cooldown_seconds)
    leases = AddressLease.objects.filter(network=network).filter(
        Q(peer__isnull=False) | Q(reserved=True) | Q(released_at__gt=cutoff)
    )
    # The family is told apart in SQL (only IPv6 has ':'): parsing every
    # address in Python made a create cost 60 ms per family at 10,000 peers.
    leases = leases.exclude(address__contains=":") if family == 4 else leases.filter(address__contains=":")
    return set(leases.values_list("address", flat=True))


def allocate(network: MeshNetwork, family: int, peer: Peer, *, now: datetime) -> str:
    taken = _unavailable(network, family, now)
    cutoff = now - timedelta(seconds=network.address_cooldown_seconds)
    # islice bounds the walk over a huge IPv6 pool: at most one candidate per
    # existing lease plus a few beyond.
    candidates = islice(pool(network, family).hosts(), 1, len(taken) + 64)
    for candidate in candidates:
        address = str(candidate)
        if address in taken:
            continue
        reused = AddressLease.objects.filter(
            network=network, address=address, peer__isnull=True, reserved=False, released_at__lte=cutoff
        ).update(peer=peer, released_at=None)
        if reused:
            return address
        try:
            with transaction.atomic():
                AddressLease.objects.create(network=network, address=address, peer=peer)
            return address
        except IntegrityError:
            continue  # another request took it a moment ago
    raise PoolExhausted(f"The IPv{family} pool {pool(network, family)} has no free address.")


def release(peer: Peer, *, now: datetime) -> None:
    AddressLease.objects.filter(peer=peer).update(peer=None, released_at=now)
