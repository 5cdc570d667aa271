"""Run this host's WireGuard gateway for a mesh network in the foreground.

Creates the interface with wireguard-go (userspace; used where there is no
kernel WireGuard), gives it the gateway addresses, turns on forwarding so
peers reach each other through it, applies the config from the database once,
then waits. The Celery worker on this host's gateway queue keeps it in sync.
"""

import os
import signal
import subprocess
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from mesh import ipam, services
from mesh.models import MeshNetwork

UAPI_DIR = Path("/var/run/wireguard")


def run(*args: str) -> None:
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise CommandError(f"{' '.join(args)}: {result.stderr.strip()}")


class Command(BaseCommand):
    help = "Create and run the WireGuard gateway interface of a mesh network (needs root)."

    def add_arguments(self, parser):
        parser.add_argument("--network", help="network name (default: the default network)")

    def handle(self, *args, network=None, **options):
        mesh = MeshNetwork.objects.get(name=network) if network else services.default_network()
        interface = mesh.interface
        socket = UAPI_DIR / f"{interface}.sock"
        if socket.exists() and subprocess.run(["wg", "show", interface], capture_output=True).returncode == 0:
            raise CommandError(f"{interface} already runs here; stop it first or use another WG_GATEWAY_INTERFACE")
        socket.unlink(missing_ok=True)
        env = {**os.environ, "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}
        child = subprocess.Popen(["wireguard-go", "-f", interface], env=env)
        stop = lambda *_: child.terminate()  # noqa: E731
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            deadline = time.monotonic() + 10
            while not socket.exists():
                if child.poll() is not None or time.monotonic() > deadline:
                    raise CommandError(f"wireguard-go could not create {interface} (is /dev/net/tun there? are you root?)")
                time.sleep(0.05)
            for family in (4, 6):
                pool = ipam.pool(mesh, family)
                run("ip", "addr", "add", f"{ipam.gateway_address(mesh, family)}/{pool.prefixlen}", "dev", interface)
            run("ip", "link", "set", interface, "up")
            run("sysctl", "-qw", "net.ipv4.ip_forward=1")
            run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
            services.gateway_sync(network_id=mesh.pk, force=True)  # a new interface starts empty
            self.stdout.write(
                f"Gateway {interface} of network '{mesh.name}' is up: {mesh.ipv4_cidr}, {mesh.ipv6_prefix}, "
                f"listening on UDP {mesh.listen_port}, peers dial {mesh.endpoint}",
            )
            child.wait()
        finally:
            if child.poll() is None:
                child.terminate()
                child.wait(timeout=10)
            socket.unlink(missing_ok=True)
