"""Tenant isolation on the gateway, rendered as one nftables table.

Traffic that enters the gateway interface and leaves it again (peer to peer)
passes the `mesh` chain: the operators' network rules, then a jump by source
address into the chain of the sender's owner, which accepts the owner's own
peers and the peers shared with them. Everything else is dropped. Traffic to
the gateway itself is not forwarded, so every peer always reaches the
gateway address.

Every packet is judged by its connection's original direction (`ct
original`), not only new ones: replies (and related ICMP errors) of an
allowed connection pass, and a withdrawn share or rule stops connections
that are already open at once. A plain `ct state established,related
accept` would keep them alive for as long as they stay busy.

The file deletes and recreates the table, and `nft -f` applies a file as one
transaction: the gateway never holds half a policy.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import NamedTuple

SAFE_NAME = re.compile(r"[A-Za-z0-9_=+.-]{1,15}")


class Reach(NamedTuple):
    """One owner: the addresses of their peers (sources), and the addresses
    those peers may open connections to (their own and shared peers)."""

    owner_id: int
    sources: list[str]
    destinations: list[str]


class Rule(NamedTuple):
    """An operator's allowance; None is any address."""

    source: str | None
    destination: str | None


def table_name(interface: str) -> str:
    if not SAFE_NAME.fullmatch(interface):
        raise ValueError(f"not an interface name: {interface!r}")
    # nft identifiers take letters, digits, '_', '.', '-'; '=' and '+' are legal in interface names.
    if re.fullmatch(r"[A-Za-z0-9_.-]+", interface):
        return f"infrasim-{interface}"
    return f"infrasim-x{interface.encode().hex()}"


def _family(prefix: str) -> str:
    return "ip" if ipaddress.ip_network(prefix, strict=False).version == 4 else "ip6"


def _by_family(addresses: Iterable[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"ip": [], "ip6": []}
    for address in dict.fromkeys(addresses):  # a peer both own and shared is listed once
        out["ip6" if ":" in address else "ip"].append(address)
    return out


def _rule_line(rule: Rule) -> str:
    parts = []
    if rule.source:
        parts.append(f"ct original {_family(rule.source)} saddr {rule.source}")
    if rule.destination:
        parts.append(f"ct original {_family(rule.destination)} daddr {rule.destination}")
    return " ".join(parts + ["accept"])


def ruleset(*, interface: str, reach: Iterable[Reach], rules: Iterable[Rule] = ()) -> str:
    table = table_name(interface)
    chains, vmaps = [], {"ip": [], "ip6": []}
    for group in reach:
        chain = f"reach_{group.owner_id}"
        lines = [
            f"    ct original {family} daddr {{ {', '.join(addresses)} }} accept"
            for family, addresses in _by_family(group.destinations).items()
            if addresses
        ]
        chains.append(f"  chain {chain} {{\n" + "\n".join(lines) + "\n  }\n")
        for family, addresses in _by_family(group.sources).items():
            vmaps[family] += [f"{address} : jump {chain}" for address in addresses]
    mesh = ["    ct state invalid drop"]
    mesh += [f"    {_rule_line(rule)}" for rule in rules]
    mesh += [
        f"    ct original {family} saddr vmap {{ {', '.join(entries)} }}" for family, entries in vmaps.items() if entries
    ]
    mesh.append("    drop")
    return (
        f"table inet {table}\n"
        f"delete table inet {table}\n"
        f"table inet {table} {{\n"
        + "".join(chains)
        + "  chain mesh {\n" + "\n".join(mesh) + "\n  }\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        f'    iifname "{interface}" oifname "{interface}" jump mesh\n'
        "  }\n"
        "}\n"
    )


def removal(interface: str) -> str:
    """A file that removes the table, whether or not it exists."""
    table = table_name(interface)
    return f"table inet {table}\ndelete table inet {table}\n"
