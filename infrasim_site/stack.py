"""`make run`: the whole embedded stack under one supervisor.

Picks Redis (REDIS_URL when it answers, otherwise a private redis-server on
loopback), applies migrations, prints the URL and hands over to honcho, which
runs the Procfile's processes and stops all of them on Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from infrasim_site.localredis import free_port, redis_answers

ROOT = Path(__file__).resolve().parent.parent


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def choose_redis(env: dict) -> tuple[str, bool]:
    """Return (REDIS_URL, whether to start a private redis-server)."""
    configured = env.get("REDIS_URL", "").strip()
    if configured:
        if redis_answers(configured):
            return configured, False
        print(f"REDIS_URL={configured} does not answer; starting a private redis-server instead.", file=sys.stderr)
    port = int(env.get("INFRASIM_PRIVATE_REDIS_PORT", "6390"))
    if not _port_is_free(port):
        port = free_port()
    env["INFRASIM_PRIVATE_REDIS_PORT"] = str(port)
    return f"redis://127.0.0.1:{port}/0", True


def _can_run_gateway() -> bool:
    """The embedded mesh gateway needs root, a tun device and wireguard-go."""
    import shutil

    if os.geteuid() != 0 or not Path("/dev/net/tun").exists() or not shutil.which("wireguard-go"):
        print("Mesh gateway not started here (needs root, /dev/net/tun and wireguard-go).", file=sys.stderr)
        return False
    return True


def main() -> int:
    env = dict(os.environ)
    env.setdefault("INFRASIM_VAR_DIR", str(ROOT / "var"))
    Path(env["INFRASIM_VAR_DIR"]).mkdir(parents=True, exist_ok=True)
    origin = env.setdefault("WEBAUTHN_RP_ORIGIN", "http://localhost:8080")
    env.setdefault("INFRASIM_HOST", "127.0.0.1")
    env.setdefault("INFRASIM_PORT", str(urlsplit(origin).port or 8080))
    env["REDIS_URL"], private_redis = choose_redis(env)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"

    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "check"], env=env, check=True)
    subprocess.run([*manage, "migrate", "--noinput"], env=env, check=True)

    processes = (["redis"] if private_redis else []) + ["web", "worker"] + (["gateway"] if _can_run_gateway() else [])
    print(
        f"\n  InfraSim is starting: open {origin}/ and create an account with a passkey.\n"
        f"  Operators: `.venv/bin/python manage.py createoperator \"Your Name\"` prints an enrollment link.\n"
        f"  Redis: {env['REDIS_URL']}{' (private)' if private_redis else ''}. Ctrl-C stops everything.\n",
        flush=True,
    )
    honcho = [sys.executable, "-m", "honcho", "start", "-f", str(ROOT / "Procfile"), "-d", str(ROOT), *processes]
    supervisor = subprocess.Popen(honcho, env=env)
    # Ctrl-C reaches honcho through the terminal's process group; a SIGTERM
    # sent to this process alone (systemd, `kill`) is passed on the same way.
    signal.signal(signal.SIGTERM, lambda *_: supervisor.terminate())
    try:
        return supervisor.wait()
    except KeyboardInterrupt:
        return supervisor.wait()


if __name__ == "__main__":
    sys.exit(main())
