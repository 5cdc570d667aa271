"""wireguard-go, the userspace WireGuard, as one process per interface.

`WireGuardGo(ifname, netns=...).start()` runs `wireguard-go -f <ifname>`
(inside a network namespace when given one, through `ip netns exec`, which
execs it, so the pid is wireguard-go's own), waits until its UAPI socket
answers, and `stop()` ends it and removes the socket. The UAPI socket lives
in /var/run/wireguard whatever the namespace, which is how `wg` in another
namespace still reaches the interface.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Self

UAPI_DIR = Path("/var/run/wireguard")


class WireGuardGoError(RuntimeError):
    pass


def socket_path(ifname: str) -> Path:
    return UAPI_DIR / f"{ifname}.sock"


def socket_listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


class WireGuardGo:
    def __init__(self, ifname: str, *, netns: str = "", log: IO | int = subprocess.DEVNULL, log_level: str = "error"):
        if not 1 <= len(ifname) <= 15:
            raise WireGuardGoError(f"not an interface name: {ifname!r}")
        self.ifname, self.netns, self.log, self.log_level = ifname, netns, log, log_level
        self.socket = socket_path(ifname)
        self.process: subprocess.Popen | None = None

    def start(self, *, timeout: float = 10) -> Self:
        if self.socket.exists():
            if socket_listening(self.socket):
                raise WireGuardGoError(f"{self.ifname} already runs here ({self.socket} answers)")
            self.socket.unlink()  # left by a wireguard-go that died
        command = ["wireguard-go", "-f", self.ifname]
        if self.netns:
            command = ["ip", "netns", "exec", self.netns, *command]
        env = {**os.environ, "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1", "LOG_LEVEL": self.log_level}
        try:
            self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        except FileNotFoundError:
            raise WireGuardGoError(f"`{command[0]}` is not installed (Debian: wireguard-go, iproute2)") from None
        deadline = time.monotonic() + timeout
        while not (self.socket.exists() and socket_listening(self.socket)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise WireGuardGoError(
                    f"wireguard-go could not create {self.ifname} (is /dev/net/tun there? are you root?)"
                )
            time.sleep(0.02)
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self) -> None:
        """Ask it to end (safe in a signal handler); `wait` and `stop` finish the job."""
        if self.running():
            self.process.terminate()

    def wait(self) -> int:
        return self.process.wait()

    def stop(self, *, timeout: float = 5) -> None:
        if self.running():
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        self.socket.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
