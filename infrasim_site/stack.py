"""`make run`: the whole embedded stack under one supervisor.

Picks Redis (REDIS_URL when it answers, otherwise a private redis-server on
loopback), applies migrations, starts the Procfile's processes under honcho,
waits until the web server, the worker and the gateway answer, and prints the
URL last. Ctrl-C or SIGTERM stops everything and exits 0.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from infrasim_site.localredis import free_port, redis_answers, start_private_redis

ROOT = Path(__file__).resolve().parent.parent
# Variables that decide which database and origin a second command (such as
# createoperator in another terminal) must share with the running stack.
SHARED_VARIABLES = ("INFRASIM_VAR_DIR", "INFRASIM_PORT", "WEBAUTHN_RP_ORIGIN", "WEBAUTHN_RP_ID")
SLOW_START_SECONDS = 60


class Shutdown:
    """Ctrl-C and SIGTERM ask for a clean stop: honcho stops its processes,
    the private Redis goes last, and the exit code is 0."""

    def __init__(self) -> None:
        self.requested = False
        self.supervisor: subprocess.Popen | None = None
        signal.signal(signal.SIGINT, self._request)
        signal.signal(signal.SIGTERM, self._request)

    def _request(self, signum, frame) -> None:
        self.requested = True
        self.stop_supervisor()

    def stop_supervisor(self) -> None:
        if self.supervisor is not None and self.supervisor.poll() is None:
            self.supervisor.terminate()


def _port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def choose_redis(env) -> tuple[str, bool]:
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


def log_options(*, log_level: str, access_log: bool) -> dict[str, str]:
    """Quiet by default: warnings and errors only, no line per request or per
    scheduled task. LOG_LEVEL=DEBUG brings the servers' own INFO lines back."""
    verbose = log_level == "DEBUG"
    # uvicorn logs its access lines at INFO, so they need that level.
    web_level = "info" if verbose or access_log else "warning"
    return {
        "INFRASIM_WEB_LOG_OPTIONS": f"--log-level {web_level} {'--access-log' if access_log else '--no-access-log'}",
        "INFRASIM_WORKER_LOG_OPTIONS": f"--loglevel {'INFO' if verbose else 'WARNING'}",
    }


def gateway_unavailable() -> str:
    """Why the embedded mesh gateway cannot run here ("" when it can)."""
    if os.geteuid() != 0 or not Path("/dev/net/tun").exists() or not shutil.which("wireguard-go"):
        return "needs root, /dev/net/tun and wireguard-go"
    return ""


def local_hypervisor() -> list[str]:
    """As root, the local host's libvirt is a session daemon that `make run`
    runs itself (unless APPLIANCE_LOCAL_LIBVIRT_URI names another)."""
    from django.conf import settings

    from appliances.sessiond import SessionDaemon

    daemon = SessionDaemon(settings.APPLIANCE_HYPERVISOR_DIR, settings.APPLIANCE_HYPERVISOR_USER)
    return ["hypervisor"] if os.geteuid() == 0 and settings.APPLIANCE_LOCAL_LIBVIRT_URI == daemon.uri else []


def loopback_endpoint_warning(endpoint: str, *, configured: str, admin_url: str | None) -> str:
    """A warning when peers would be told to dial a loopback address.

    `endpoint` is what the configs say (the network's, once it exists);
    `configured` is WG_GATEWAY_ENDPOINT; `admin_url` is the network's admin
    page when the network already exists, since the variable is read only
    when the network is created."""
    host = endpoint.rpartition(":")[0].strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        return ""
    port = endpoint.rpartition(":")[2]
    fix = (
        f"set the network's endpoint to a public host or address at {admin_url} "
        f"(WG_GATEWAY_ENDPOINT, now {configured}, is read only when a network is created)"
        if admin_url
        else f"set WG_GATEWAY_ENDPOINT=<public host or address>:{port} before starting"
    )
    return (
        f"Warning: every mesh config will say Endpoint = {endpoint}, a loopback address only this machine reaches.\n"
        f"  For other devices, {fix}."
    )


def web_answers(host: str, port: int) -> bool:
    """The ASGI server serves a Django page (any status below 500)."""
    connect_to = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    connection = http.client.HTTPConnection(connect_to, port, timeout=2)
    try:
        connection.request("GET", "/signin/")
        return connection.getresponse().status < 500
    except OSError:
        return False
    finally:
        connection.close()


def gateway_answers(network_name: str) -> bool:
    """The gateway interface exists and carries the database's config."""
    from mesh.models import MeshNetwork

    network = MeshNetwork.objects.filter(name=network_name).first()
    if network is None:
        return False
    shown = subprocess.run(["wg", "show", network.interface, "listen-port"], capture_output=True, text=True)
    return (
        shown.returncode == 0
        and shown.stdout.strip() == str(network.listen_port)
        and network.applied_generation >= network.generation
    )


def wait_until_ready(shutdown: Shutdown, supervisor: subprocess.Popen, env, *, with_gateway: bool) -> bool:
    """Poll every part until all answer; False if the run ends first."""
    from django.conf import settings
    from django.db import close_old_connections

    from infrasim_site.celery import app

    # One round trip through the broker proves the worker consumes the queues.
    ping = app.send_task("infrasim_site.tasks.ping", args=["make run"])
    pending = {"web", "worker", *(["gateway"] if with_gateway else [])}
    started = time.monotonic()
    told_slow = False
    while pending:
        if shutdown.requested or supervisor.poll() is not None:
            return False
        if "web" in pending and web_answers(env["INFRASIM_HOST"], int(env["INFRASIM_PORT"])):
            pending.discard("web")
        if "worker" in pending and ping.ready():
            ping.forget()
            pending.discard("worker")
        if "gateway" in pending:
            close_old_connections()
            if gateway_answers(settings.MESH_DEFAULT_NETWORK):
                pending.discard("gateway")
        if pending and not told_slow and time.monotonic() - started > SLOW_START_SECONDS:
            told_slow = True
            print(f"  Still waiting for: {', '.join(sorted(pending))} (its output above says why).", flush=True)
        time.sleep(0.25)
    return True


def banner(env, *, private_redis: bool, gateway_reason: str, preset: dict[str, str]) -> str:
    from django.conf import settings
    from django.urls import reverse

    from mesh.models import MeshNetwork

    network = MeshNetwork.objects.filter(name=settings.MESH_DEFAULT_NETWORK).first()
    configured = "{}:{}".format(*settings.WG_GATEWAY_ENDPOINT)
    warning = loopback_endpoint_warning(
        network.endpoint if network else configured,
        configured=configured,
        admin_url=settings.WEBAUTHN_RP_ORIGIN + reverse("admin:mesh_meshnetwork_change", args=[network.pk]) if network else None,
    )
    if gateway_reason:
        gateway = f"Mesh gateway: not started here ({gateway_reason})."
    else:
        gateway = f"Mesh gateway: {network.interface}, UDP {network.listen_port}."
    shared = " ".join(f"{name}={shlex.quote(value)}" for name, value in preset.items())
    lines = [
        "",
        f"  Redis: {env['REDIS_URL']}{' (private)' if private_redis else ''}. {gateway}",
        *([f"  {warning}"] if warning else []),
        f"  Operators: `{shared + ' ' if shared else ''}.venv/bin/python manage.py createoperator \"Your Name\"` "
        "prints an enrollment link.",
        "  Ctrl-C stops everything.",
        "",
        f"  InfraSim is ready: open {settings.WEBAUTHN_RP_ORIGIN}/ and create an account with a passkey.",
        "",
    ]
    return "\n".join(lines)


def register_local_host() -> str:
    """This machine as the hypervisor host (on first start); its queue is
    the one the worker started here consumes besides the app queues."""
    from appliances.services import host_register_local

    return host_register_local().queue


def prepare(env) -> str:
    """Check the configuration, migrate and pick the log options; returns
    an error message naming the variable or setting at fault, or ""."""
    import django
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import CommandError, call_command

    from infrasim_site.env import env_bool

    env.setdefault("DJANGO_SETTINGS_MODULE", "infrasim_site.settings")
    try:
        django.setup()
        # Warnings and errors still reach stderr; the "no issues" line does not.
        call_command("check", stdout=io.StringIO())
        call_command("migrate", interactive=False, verbosity=0)
        env["INFRASIM_HOST_QUEUE"] = register_local_host()
        env.update(log_options(log_level=settings.LOG_LEVEL, access_log=env_bool("INFRASIM_ACCESS_LOG", False)))
    except (ImproperlyConfigured, CommandError) as exc:
        return str(exc)
    return ""


def supervise(shutdown: Shutdown, env, *, private_redis: bool, preset: dict[str, str]) -> int:
    from django.db import connections

    gateway_reason = gateway_unavailable()
    processes = ["web", "worker", *([] if gateway_reason else ["gateway"]), *local_hypervisor()]
    honcho = [sys.executable, "-m", "honcho", "start", "-f", str(ROOT / "Procfile"), "-d", str(ROOT), *processes]
    # In a session of its own, so the terminal's Ctrl-C reaches only this
    # process, which then stops honcho once, in order.
    supervisor = subprocess.Popen(honcho, env=env, start_new_session=True)
    shutdown.supervisor = supervisor
    if shutdown.requested:
        shutdown.stop_supervisor()
    if wait_until_ready(shutdown, supervisor, env, with_gateway=not gateway_reason):
        print(banner(env, private_redis=private_redis, gateway_reason=gateway_reason, preset=preset), flush=True)
    connections.close_all()
    code = supervisor.wait()
    if shutdown.requested:
        return 0
    print(f"\n  InfraSim stopped: a process exited on its own (honcho exit code {code}); see its output above.", file=sys.stderr)
    return code or 1


def main() -> int:
    shutdown = Shutdown()
    env = os.environ
    preset = {name: env[name] for name in SHARED_VARIABLES if env.get(name)}
    env.setdefault("INFRASIM_VAR_DIR", str(ROOT / "var"))
    var_dir = Path(env["INFRASIM_VAR_DIR"])
    var_dir.mkdir(parents=True, exist_ok=True)
    env.setdefault("INFRASIM_HOST", "127.0.0.1")
    if not env.get("INFRASIM_PORT") and env.get("WEBAUTHN_RP_ORIGIN"):
        try:
            env["INFRASIM_PORT"] = str(urlsplit(env["WEBAUTHN_RP_ORIGIN"]).port or 8080)
        except ValueError:
            pass  # settings refuse the origin below, naming the variable
    env.setdefault("INFRASIM_PORT", "8080")
    env["REDIS_URL"], private_redis = choose_redis(env)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"

    problem = prepare(env)
    # Checked before starting, or another server's answers would pass for ours.
    if not problem and not _port_is_free(int(env["INFRASIM_PORT"]), env["INFRASIM_HOST"]):
        problem = f"INFRASIM_PORT: {env['INFRASIM_HOST']}:{env['INFRASIM_PORT']} is already in use; stop what listens there or choose another port"
    if problem:
        print(f"InfraSim cannot start: {problem}", file=sys.stderr)
        return 2
    if shutdown.requested:
        return 0
    redis_process = None
    if private_redis:
        try:
            redis_process = start_private_redis(str(var_dir), port=int(env["INFRASIM_PRIVATE_REDIS_PORT"]))[1]
        except RuntimeError as exc:
            print(f"InfraSim cannot start: {exc}", file=sys.stderr)
            return 2
    try:
        return supervise(shutdown, env, private_redis=private_redis, preset=preset)
    finally:
        if redis_process is not None:
            redis_process.terminate()
            redis_process.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
