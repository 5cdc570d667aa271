"""Finding a Redis to talk to, or starting a private one on loopback.

Shared by `make run` (infrasim_site.stack), the test bootstrap and the
benchmarks. It imports nothing from Django, so it can run before settings.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from urllib.parse import urlsplit


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def start_private_redis(workdir: str, *, port: int | None = None) -> tuple[str, subprocess.Popen]:
    """A redis-server on 127.0.0.1 that keeps nothing on disk; the caller stops it."""
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server is not installed (Debian: redis-server; `make` installs it)")
    port = port or free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # Out of the terminal's process group: Ctrl-C must not stop Redis
        # before the processes that use it have shut down.
        start_new_session=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not redis_answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            process.terminate()
            raise RuntimeError("the private redis-server did not start")
        time.sleep(0.05)
    return url, process
