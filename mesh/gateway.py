"""The gateway interface, driven with `wg` and `nft`: apply a full config
with `wg syncconf` (which changes only what differs, so other peers'
sessions stay up), the isolation policy with `nft -f`, and read handshakes
and transfer counters with `wg show dump`.

`wg` reaches a wireguard-go interface through its UAPI socket under
/var/run/wireguard, and a kernel interface through netlink. nftables rules
belong to a network namespace, so when the interface lives in another
namespace than this process (`netns`), both run under `ip netns exec`.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import NamedTuple


class GatewayError(Exception):
    pass


class PeerStats(NamedTuple):
    public_key: str
    last_handshake: datetime | None
    rx_bytes: int
    tx_bytes: int


PACKAGES = {"wg": "wireguard-tools", "nft": "nftables"}


def _run(tool: str, *args: str, netns: str = "", input: str | None = None, timeout: float = 30) -> str:
    command = ["ip", "netns", "exec", netns, tool, *args] if netns else [tool, *args]
    try:
        result = subprocess.run(command, capture_output=True, text=True, input=input, timeout=timeout)
    except FileNotFoundError:
        raise GatewayError(f"`{command[0]}` is not installed (Debian: {PACKAGES.get(command[0], 'iproute2')})") from None
    except subprocess.TimeoutExpired:
        raise GatewayError(f"`{tool} {args[0]}` timed out") from None
    if result.returncode != 0:
        where = f" in netns {netns}" if netns else ""
        raise GatewayError(f"`{tool} {' '.join(args[:2])}`{where} failed: {result.stderr.strip() or result.returncode}")
    return result.stdout


def lock_path(interface: str) -> str:
    return os.path.join(tempfile.gettempdir(), f"infrasim-wg-{interface}.lock")


@contextmanager
def exclusive(interface: str) -> Iterator[None]:
    """Hold this host's lock for one interface (every sync of an interface
    runs on its gateway host, in any of the worker's threads or processes)."""
    fd = os.open(lock_path(interface), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def apply(interface: str, config: str, *, netns: str = "") -> None:
    # The config holds the gateway's private key: a private temp file, removed at once.
    fd, path = tempfile.mkstemp(prefix="infrasim-wg-", suffix=".conf")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(config)
        _run("wg", "syncconf", interface, path, netns=netns)
    finally:
        os.unlink(path)


def apply_policy(ruleset: str, *, netns: str = "") -> None:
    """Load an nft file (mesh.policy renders one that replaces its table atomically)."""
    _run("nft", "-f", "-", netns=netns, input=ruleset)


def stats(interface: str, *, netns: str = "") -> list[PeerStats]:
    rows = _run("wg", "show", interface, "dump", netns=netns).splitlines()[1:]  # the first line is the interface
    result = []
    for row in rows:
        fields = row.split("\t")
        handshake = int(fields[4])
        result.append(
            PeerStats(
                public_key=fields[0],
                last_handshake=datetime.fromtimestamp(handshake, tz=timezone.utc) if handshake else None,
                rx_bytes=int(fields[5]),
                tx_bytes=int(fields[6]),
            )
        )
    return result

