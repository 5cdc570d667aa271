"""The gateway interface, driven with `wg`: apply a full config with
`wg syncconf` (which changes only what differs, so other peers' sessions stay
up) and read handshakes and transfer counters with `wg show dump`.

`wg` reaches a wireguard-go interface through its UAPI socket under
/var/run/wireguard, and a kernel interface through netlink.
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


def _wg(*args: str, timeout: float = 30) -> str:
    try:
        result = subprocess.run(["wg", *args], capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise GatewayError("`wg` is not installed (Debian: wireguard-tools)") from None
    except subprocess.TimeoutExpired:
        raise GatewayError(f"`wg {args[0]}` timed out") from None
    if result.returncode != 0:
        raise GatewayError(f"`wg {' '.join(args[:2])}` failed: {result.stderr.strip() or result.returncode}")
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


def apply(interface: str, config: str) -> None:
    # The config holds the gateway's private key: a private temp file, removed at once.
    fd, path = tempfile.mkstemp(prefix="infrasim-wg-", suffix=".conf")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(config)
        _wg("syncconf", interface, path)
    finally:
        os.unlink(path)


def stats(interface: str) -> list[PeerStats]:
    rows = _wg("show", interface, "dump").splitlines()[1:]  # the first line is the interface
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

