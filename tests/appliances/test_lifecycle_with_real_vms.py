"""Appliances end to end, with real VMs: the API, the real worker, two real
libvirt hosts (session daemons of two Unix users), the Debian image built
here, QEMU under TCG, cloud-init, WireGuard in the guest and on a gateway in
a network namespace.

One test walks an appliance's whole life, because a boot under TCG costs
about a minute: create -> ready (phone home) -> reachable over the mesh by
its owner's device only -> snapshot, change, revert -> live migration to
the other host (the guest keeps running) -> shut down -> delete, leaving
nothing behind. A second tenant's appliance boots beside it on the same
host to show that tenants cannot reach each other.
"""

from __future__ import annotations

import os
import time

import pytest

from appliances import hypervisor
from appliances.models import Appliance, Host, Operation
from mesh.models import Peer
from tests.appliances.conftest import TEMPLATE, ensure_catalog, ssh_public_key
from tests.mesh.netns import UNDERLAY, run
from tests.mesh.test_tunnels import Up
from tests.people import client_for, person

API = "/api/meshnet"
BOOT_TIMEOUT = 900  # a first run also builds the image (about 2-3 minutes)
UPLINK_ADDRESS = UNDERLAY.network_address + 254

pytestmark = pytest.mark.timeout(2400)


@pytest.fixture()
def uplink(topology):
    """A link from this machine's own network namespace into the mesh
    underlay: QEMU's user-mode networking sends the guests' traffic from here,
    so that is how guests reach the gateway (as guests on a real host reach
    it through the host's network)."""
    name = f"isim{topology.token}"
    run("ip", "link", "add", name, "type", "veth", "peer", "name", "up0", "netns", topology.underlay.name)
    try:
        topology.underlay.ip("link", "set", "up0", "master", "br0", "up")
        run("ip", "address", "add", f"{UPLINK_ADDRESS}/{UNDERLAY.prefixlen}", "dev", name)
        run("ip", "link", "set", name, "up")
        yield name
    finally:
        run("ip", "link", "delete", name, check=False)


@pytest.fixture()
def hosts(libvirt_hosts, settings, mesh, uplink):
    """The two libvirt daemons as Host rows. The first has more room, so
    placement puts both tenants' appliances there; the second takes the
    migration."""
    ensure_catalog()
    settings.MESH_DEFAULT_NETWORK = mesh.network.name
    rows = []
    for fixture_host, memory in ((libvirt_hosts.first, 8192), (libvirt_hosts.second, 4096)):
        fixture_host.storage_dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(fixture_host.storage_dir, fixture_host.uid, fixture_host.gid)
        rows.append(Host.objects.create(
            name=fixture_host.name, libvirt_uri=fixture_host.uri, queue=f"host.{fixture_host.name}", vcpus=4,
            memory_mib=memory, disk_gib=50, storage_dir=str(fixture_host.storage_dir),
            image_cache_dir=str(settings.IMAGE_CACHE_DIR), mesh_endpoint=mesh.topology.endpoint,
            migration_address=fixture_host.migration_address,
        ))
    yield rows
    libvirt_hosts.remove_all_domains()


def wait_for(appliance_id: int, wanted: str, timeout: float) -> Appliance:
    deadline = time.monotonic() + timeout
    while True:
        appliance = Appliance.objects.filter(pk=appliance_id).first()
        if appliance is None:
            raise AssertionError(f"appliance {appliance_id} is gone while waiting for {wanted}")
        if appliance.status == wanted:
            return appliance
        if appliance.status == "failed" and wanted != "failed":
            raise AssertionError(
                f"appliance {appliance.name} failed: {appliance.last_error}\n{appliance.failure_console_log[-3000:]}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"appliance {appliance.name} is {appliance.status} ({appliance.status_detail}), "
                                 f"not {wanted}, after {timeout} s")
        time.sleep(0.5)


def wait_for_job(appliance_id: int, kind: str, timeout: float = 300) -> Operation:
    deadline = time.monotonic() + timeout
    while True:
        job = Operation.objects.filter(appliance_id=appliance_id, kind=kind).order_by("-pk").first()
        if job is not None and job.status in ("succeeded", "failed"):
            assert job.status == "succeeded", f"{kind}: {job.last_error}"
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"{kind} not done after {timeout} s: {job and job.status} {job and job.last_error}")
        time.sleep(0.3)


def in_guest(appliance: Appliance, *argv: str, timeout: float = 60) -> tuple[int, str, str]:
    conn = hypervisor.connect(appliance.host.libvirt_uri)
    try:
        return hypervisor.guest_exec(conn, str(appliance.domain_uuid), list(argv), timeout=timeout)
    finally:
        conn.close()


def uptime(appliance: Appliance) -> float:
    code, out, _ = in_guest(appliance, "cat", "/proc/uptime")
    assert code == 0
    return float(out.split()[0])


def domains_on(fixture_host) -> list[str]:
    conn = fixture_host.connect()
    try:
        return [d["name"] for d in hypervisor.list_domains(conn)]
    finally:
        conn.close()


def test_an_appliances_whole_life_on_real_vms(hosts, libvirt_hosts, mesh, worker, live, tmp_path, record_testsuite_property):
    alice, bob = person("alice"), person("bob")
    alice_api, bob_api = client_for(alice), client_for(bob)
    key = ssh_public_key(tmp_path)
    started = time.monotonic()
    created = alice_api.post(f"{API}/appliances", {
        "name": "web", "template": TEMPLATE, "vcpus": 1, "memory_mib": 512, "disk_gib": 3,
        "ssh_authorized_keys": [key], "user_data": "#cloud-config\nwrite_files:\n- path: /etc/motd\n  content: hi\n",
    }, content_type="application/json")
    assert created.status_code == 201, created.content
    neighbour = bob_api.post(f"{API}/appliances", {"name": "bobs", "template": TEMPLATE, "memory_mib": 512},
                             content_type="application/json")
    assert neighbour.status_code == 201, neighbour.content
    web_id, bobs_id = created.json()["id"], neighbour.json()["id"]

    # --- create -> ready: cloud-init ran and phoned home --------------------------------
    web = wait_for(web_id, "ready", BOOT_TIMEOUT)
    record_testsuite_property("api_to_ready_s", round(time.monotonic() - started, 1))
    bobs = wait_for(bobs_id, "ready", BOOT_TIMEOUT)
    assert web.host.name == bobs.host.name == "hv1", "both tenants share the first host"
    detail = alice_api.get(f"{API}/appliances/{web_id}").json()
    assert detail["status"] == "ready" and detail["host"] == "hv1"
    code, motd, _ = in_guest(web, "cat", "/etc/motd")
    assert code == 0 and motd.strip() == "hi", "the owner's own cloud-config was merged in"
    code, keys, _ = in_guest(web, "cat", "/home/debian/.ssh/authorized_keys")
    assert key.split()[1] in keys, "the owner's SSH key is in the guest"
    code, hostname, _ = in_guest(web, "hostname")
    assert hostname.strip() == "web"

    # --- the mesh: the owner's device reaches it, another tenant's does not ------------------
    laptop, desktop = Up(mesh, "laptop", owner=alice), Up(mesh, "desktop", owner=bob)
    mesh.wait_applied()
    laptop.bring_up(), desktop.bring_up()
    gateway_v4 = mesh.topology.gateway_v4.split("/")[0]
    laptop.node.ping_until_ok(gateway_v4)
    desktop.node.ping_until_ok(gateway_v4)
    laptop.node.ping_until_ok(web.peer.ipv4, timeout=90)
    laptop.node.ping_until_ok(web.peer.ipv6, timeout=30)
    assert desktop.node.ping(web.peer.ipv4, count=3, interval=0.2).received == 0, "another tenant's device reached it"

    # ...and the other tenant's VM on the same host reaches neither it nor its host network.
    code, _, _ = in_guest(bobs, "ping", "-c", "2", "-W", "2", gateway_v4)
    assert code == 0, "bob's appliance reaches the gateway over its own tunnel"
    code, _, _ = in_guest(bobs, "ping", "-c", "3", "-W", "2", web.peer.ipv4)
    assert code != 0, "a tenant's appliance reached another tenant's appliance over the mesh"
    code, out, _ = in_guest(bobs, "ip", "-4", "-o", "address", "show", "scope", "global")
    assert web.peer.ipv4 not in out

    # --- snapshot, change, revert --------------------------------------------------------------
    response = alice_api.post(f"{API}/appliances/{web_id}/snapshots", {"name": "clean"}, content_type="application/json")
    assert response.status_code == 202, response.content
    wait_for_job(web_id, "snapshot_create")
    snapshots = alice_api.get(f"{API}/appliances/{web_id}/snapshots").json()["results"]
    assert [s["name"] for s in snapshots] == ["clean"] and snapshots[0]["with_memory"] is True
    assert in_guest(web, "sh", "-c", "echo changed > /var/tmp/marker && sync")[0] == 0
    assert in_guest(web, "test", "-e", "/var/tmp/marker")[0] == 0
    response = alice_api.post(f"{API}/appliances/{web_id}/snapshots/{snapshots[0]['id']}/revert")
    assert response.status_code == 202, response.content
    wait_for_job(web_id, "snapshot_revert")
    web = wait_for(web_id, "ready", 60)
    assert in_guest(web, "test", "-e", "/var/tmp/marker")[0] == 1, "the change survived the revert"
    assert alice_api.delete(f"{API}/appliances/{web_id}/snapshots/{snapshots[0]['id']}").status_code == 202
    wait_for_job(web_id, "snapshot_delete")
    assert alice_api.get(f"{API}/appliances/{web_id}/snapshots").json()["results"] == []

    # --- live migration to the second host -------------------------------------------------
    before = uptime(web)
    response = alice_api.post(f"{API}/appliances/{web_id}/migrate", {"host": "hv2"}, content_type="application/json")
    assert response.status_code == 202, response.content
    job = wait_for_job(web_id, "migrate", timeout=600)
    web = wait_for(web_id, "ready", 60)
    record_testsuite_property("migration_s", job.result.get("duration_s"))
    record_testsuite_property("migration_downtime_ms", job.result.get("downtime_ms"))
    assert web.host.name == "hv2"
    assert domains_on(libvirt_hosts.first) == [f"infrasim-{bobs_id}"], "the VM left the first host"
    assert domains_on(libvirt_hosts.second) == [web.domain_name]
    assert uptime(web) > before, "the guest kept running (its uptime went on)"
    laptop.node.ping_until_ok(web.peer.ipv4, timeout=60)
    log = alice_api.get(f"{API}/appliances/{web_id}/console-log")
    assert log.status_code == 200 and "Cloud-init" in log.content.decode(), log.content[-500:]

    # --- shut down and delete: nothing remains --------------------------------------------------
    assert alice_api.post(f"{API}/appliances/{web_id}/shutdown").status_code == 202
    web = wait_for(web_id, "stopped", 120)
    assert wait_for_job(web_id, "shutdown").result == {"shutdown": "clean"}

    # --- start it again (and reboot the neighbour meanwhile), then pull the plug ---------------
    bobs_uptime = uptime(bobs)
    assert alice_api.post(f"{API}/appliances/{web_id}/start").status_code == 202
    assert bob_api.post(f"{API}/appliances/{bobs_id}/reboot").status_code == 202
    web = wait_for(web_id, "ready", 300)
    assert uptime(web) < 300, "a fresh boot"
    bobs = wait_for(bobs_id, "ready", 300)
    assert uptime(bobs) < bobs_uptime, "the neighbour rebooted"
    assert alice_api.post(f"{API}/appliances/{web_id}/poweroff").status_code == 202
    web = wait_for(web_id, "stopped", 60)
    peer_key = web.peer.public_key
    for client, appliance_id in ((alice_api, web_id), (bob_api, bobs_id)):
        assert client.delete(f"{API}/appliances/{appliance_id}").status_code == 202
    deadline = time.monotonic() + 120
    while Appliance.objects.filter(pk__in=[web_id, bobs_id]).exists():
        assert time.monotonic() < deadline, list(Appliance.objects.values_list("name", "status", "last_error"))
        time.sleep(0.3)
    assert alice_api.get(f"{API}/appliances/{web_id}").status_code == 404
    for fixture_host in libvirt_hosts:
        assert domains_on(fixture_host) == []
        for name in (web.domain_name, f"infrasim-{bobs_id}"):
            assert not (fixture_host.storage_dir / name).exists(), f"files of {name} left behind"
    assert not Peer.objects.filter(public_key=peer_key, status="active").exists()
    mesh.wait_applied()
    assert peer_key not in mesh.topology.gateway.wg.peers(), "the appliance's peer is still on the gateway"
