"""`manage.py rungateway` (what `make run` starts) brings up a working
gateway: a peer configured from its downloaded .conf reaches it, the
isolation policy is in place, and stopping the command removes the
interface and the policy and gives back the forwarding settings it found."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.db.models import F

from identity.models import User
from mesh import services
from mesh.models import MeshNetwork
from tests import database
from tests.mesh import netns
from tests.mesh.test_tunnels import download_config, wg_genkey

ROOT = Path(__file__).resolve().parents[2]


def test_rungateway_serves_a_peer_that_uses_its_downloaded_config(netns_ready, transactional_db):
    # No Celery worker here: whatever the gateway holds, rungateway put there.
    third = random.randrange(256)
    with netns.Topology(v4_pool=f"100.97.{third}.0/24", v6_pool=f"fd5f:1a{third:02x}:7c00::/64",
                        start_gateway=False) as topo:
        network = services.network_create(
            actor=None, name=f"rungw-{topo.token}", ipv4_cidr=str(topo.v4_pool), ipv6_prefix=str(topo.v6_pool),
            endpoint=topo.endpoint, listen_port=netns.LISTEN_PORT, interface=topo.gateway_interface,
        )
        user = User.objects.create_user(display_name="Gail Gateway", signup_state="active")
        private, public = wg_genkey()
        peer = services.peer_create(actor=user, name="laptop", public_key=public, network=network).peer

        # As after a restart: the database says everything was applied, but
        # the new interface is empty, so rungateway must apply it anyway.
        MeshNetwork.objects.filter(pk=network.pk).update(applied_generation=F("generation"), last_sync_error="")
        table = f"infrasim-{topo.gateway_interface}"
        forwarding = ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding")

        def sysctls() -> list[str]:
            return [topo.gateway.ns.exec("sysctl", "-n", key).stdout.strip() for key in forwarding]

        topo.gateway.ns.exec("sysctl", "-qw", *(f"{key}=0" for key in forwarding))
        assert sysctls() == ["0", "0"]
        env = {**os.environ, "DATABASE_URL": database.url_for_subprocess(other_network_namespace=True)}
        gateway = topo.gateway.ns.popen(
            sys.executable, "manage.py", "rungateway", "--network", network.name,
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        try:
            banner = gateway.stdout.readline()
            assert "is up" in banner, banner
            node = topo.add_peer()
            node.bring_up(download_config(user, peer.pk), private_key=private)
            gateway_v4 = topo.gateway_v4.split("/")[0]
            gateway_v6 = topo.gateway_v6.split("/")[0]
            assert node.ping_until_ok(gateway_v4, timeout=10) < 10
            assert node.ping(gateway_v6, count=3, interval=0.05).received == 3
            peers = topo.gateway.ns.exec("wg", "show", topo.gateway_interface, "peers").stdout.split()
            assert peers == [public]
            assert sysctls() == ["1", "1"]
            policy = topo.gateway.ns.exec("nft", "list", "table", "inet", table).stdout
            assert f"{peer.ipv4} : jump reach_{user.pk}" in policy
        finally:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(timeout=15)
        deadline = time.monotonic() + 5
        while topo.gateway.ns.ip("link", "show", topo.gateway_interface, check=False).returncode == 0:
            assert time.monotonic() < deadline, "the interface outlived the command"
            time.sleep(0.05)
        assert not (netns.WG_RUN_DIR / f"{topo.gateway_interface}.sock").exists()
        assert gateway.returncode == 0
        assert sysctls() == ["0", "0"], "forwarding is back to what the command found"
        assert topo.gateway.ns.exec("nft", "list", "table", "inet", table, check=False).returncode != 0
