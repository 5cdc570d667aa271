"""Run this host's WireGuard gateway for a mesh network in the foreground.

Creates the interface with wireguard-go (userspace; used where there is no
kernel WireGuard) in the network's namespace, gives it the gateway
addresses, turns on forwarding so peers reach each other through it, applies
the config and the isolation policy from the database once, then waits. The
Celery worker on this host's gateway queue keeps both in sync. On exit the
interface and the policy table go, and forwarding is set back to what it was.
"""

import signal
import subprocess

from django.core.management.base import BaseCommand, CommandError

from mesh import ipam, services
from mesh.gateway import GatewayError
from mesh.models import MeshNetwork
from mesh.wireguard_go import WireGuardGo, WireGuardGoError

FORWARDING = ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding")


def run(netns: str, *args: str) -> str:
    command = ["ip", "netns", "exec", netns, *args] if netns else list(args)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise CommandError(f"{' '.join(command)}: {result.stderr.strip()}")
    return result.stdout.strip()


class Command(BaseCommand):
    help = "Create and run the WireGuard gateway interface of a mesh network (needs root)."

    def add_arguments(self, parser):
        parser.add_argument("--network", help="network name (default: the default network)")

    def handle(self, *args, network=None, **options):
        mesh = MeshNetwork.objects.filter(name=network).first() if network else services.network_ensure_default()
        if mesh is None:
            raise CommandError(f"no network named {network!r}")
        interface, netns = mesh.interface, mesh.gateway_netns
        driver = WireGuardGo(interface, netns=netns)
        try:
            driver.start()
        except WireGuardGoError as exc:
            raise CommandError(f"{exc}; stop it first or use another WG_GATEWAY_INTERFACE") from None
        signal.signal(signal.SIGTERM, lambda *_: driver.terminate())
        signal.signal(signal.SIGINT, lambda *_: driver.terminate())
        # Forwarding is a setting of the whole host (namespace): give back what we found.
        previous = {key: run(netns, "sysctl", "-n", key) for key in FORWARDING}
        try:
            for family in (4, 6):
                pool = ipam.pool(mesh, family)
                run(netns, "ip", "addr", "add", f"{ipam.gateway_address(mesh, family)}/{pool.prefixlen}", "dev", interface)
            run(netns, "ip", "link", "set", interface, "up")
            for key in FORWARDING:
                run(netns, "sysctl", "-qw", f"{key}=1")
            try:
                services.gateway_sync(network_id=mesh.pk, force=True)  # a new interface starts empty
            except GatewayError as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(
                f"Gateway {interface} of network '{mesh.name}' is up: {mesh.ipv4_cidr}, {mesh.ipv6_prefix}, "
                f"listening on UDP {mesh.listen_port}, peers dial {mesh.endpoint}",
            )
            self.stdout.flush()
            driver.wait()
        finally:
            driver.stop()
            for key, value in previous.items():
                run(netns, "sysctl", "-qw", f"{key}={value}")
            try:
                services.gateway_remove_policy(network_id=mesh.pk)
            except GatewayError as exc:
                self.stderr.write(f"could not remove the nft table of {interface}: {exc}")
