"""Loaded with `-p tests.bootstrap`, before Django's settings are read.

It makes the environment the settings need: a scratch var/ directory, the
origin of the live ASGI server the suite starts, and a reachable Redis: the
one in REDIS_URL if it answers, otherwise a private redis-server started here
and stopped when the run ends.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
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


def start_private_redis(workdir: str) -> str:
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server is not installed; run `make test`, which installs it")
    port = free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    atexit.register(process.terminate)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not redis_answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the private redis-server did not start")
        time.sleep(0.05)
    return url


_workdir = tempfile.mkdtemp(prefix="infrasim-test-")
atexit.register(shutil.rmtree, _workdir, True)

os.environ["INFRASIM_VAR_DIR"] = _workdir
# The suite runs on SQLite unless told to use another server (the suite also
# passes on PostgreSQL: INFRASIM_TEST_DATABASE_URL=postgres://...).
if os.environ.get("INFRASIM_TEST_DATABASE_URL"):
    os.environ["DATABASE_URL"] = os.environ["INFRASIM_TEST_DATABASE_URL"]
else:
    os.environ.pop("DATABASE_URL", None)
LIVE_SERVER_PORT = free_port()
os.environ["WEBAUTHN_RP_ID"] = "localhost"
os.environ["WEBAUTHN_RP_ORIGIN"] = f"http://localhost:{LIVE_SERVER_PORT}"
os.environ["ALLOWED_HOSTS"] = "localhost,127.0.0.1,testserver"

_redis = os.environ.get("REDIS_URL", "")
if not _redis or not redis_answers(_redis):
    _redis = start_private_redis(_workdir)
os.environ["REDIS_URL"] = _redis
