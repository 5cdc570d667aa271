"""Archives end to end, with real VMs: a ready appliance under TCG is
exported while it runs (paused for the copy), downloaded with Range and
ETag, verified with `appliance_verify` and with plain `tar` + `sha256sum`,
imported as a new appliance that boots, phones home and answers a ping on
its new mesh address, and, once stopped, exported twice to byte-identical
archives. Deleting the appliance deletes its archives.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from django.core.management import call_command

from appliances.models import Appliance, Archive
from infrasim_site.sealing import unseal
from tests.appliances.conftest import TEMPLATE, ssh_public_key
from tests.appliances.test_lifecycle_with_real_vms import (  # noqa: F401 (fixtures)
    BOOT_TIMEOUT,
    hosts,
    in_guest,
    uplink,
    wait_for,
    wait_for_job,
)
from tests.mesh.test_tunnels import Up
from tests.people import client_for, person

API = "/api/meshnet"

pytestmark = pytest.mark.timeout(2400)

USER_DATA = """#cloud-config
write_files:
- path: /etc/motd
  content: exported
- path: /root/api-token
  content: s3cr3t-token
  permissions: '0600'
chpasswd:
  expire: false
  users:
  - {name: debian, password: hunter2, type: text}
"""


def download(client, appliance_id: int, **headers):
    response = client.get(f"{API}/appliances/{appliance_id}/archive", **headers)
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return response, body


def members(body: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.name != "disk.qcow2"}


def test_export_verify_import_and_boot(hosts, libvirt_hosts, mesh, worker, live, tmp_path, settings):
    began = time.monotonic()
    settings.ARCHIVE_DIR = str(tmp_path / "archives")
    alice, bob = person("alice"), person("bob")
    alice_api, bob_api = client_for(alice), client_for(bob)
    created = alice_api.post(f"{API}/appliances", {
        "name": "web", "template": TEMPLATE, "vcpus": 1, "memory_mib": 512, "disk_gib": 3,
        "ssh_authorized_keys": [ssh_public_key(tmp_path)], "user_data": USER_DATA,
    }, content_type="application/json")
    assert created.status_code == 201, created.content
    web_id = created.json()["id"]
    web = wait_for(web_id, "ready", BOOT_TIMEOUT)
    print(f"ready after {time.monotonic() - began:.0f} s")
    assert in_guest(web, "sh", "-c", "echo from-the-original > /var/tmp/marker && sync")[0] == 0

    # --- export while it runs ---------------------------------------------------------------
    response = alice_api.post(f"{API}/appliances/{web_id}/archive")
    assert response.status_code == 202, response.content
    assert response.json()["kind"] == "export"
    assert bob_api.get(f"{API}/appliances/{web_id}/archive").status_code == 404
    assert bob_api.post(f"{API}/appliances/{web_id}/archive").status_code == 404
    job = wait_for_job(web_id, "export", timeout=600)
    assert job.result["consistency"]["method"] == "paused"
    print("export of a running appliance:", job.result)
    web = wait_for(web_id, "ready", 10)
    assert in_guest(web, "true")[0] == 0, "the guest runs on after the export"

    response, body = download(alice_api, web_id)
    assert response.status_code == 200, body[:300]
    sha256 = hashlib.sha256(body).hexdigest()
    assert response["ETag"] == f'"{sha256}"'
    assert response["Content-Disposition"] == f'attachment; filename="appliance-{web_id}.tar.gz"'
    assert int(response["Content-Length"]) == len(body)
    partial, part = download(alice_api, web_id, HTTP_RANGE="bytes=100-199")
    assert partial.status_code == 206 and part == body[100:200]
    assert Archive.objects.get(appliance_id=web_id).sha256 == sha256

    # No secrets unless asked for: no WireGuard keys, no phone-home URL, no credentials of the owner's.
    texts = members(body)
    manifest = json.loads(texts["manifest.json"])
    assert manifest["secrets_included"] is False and manifest["consistency"]["method"] == "paused"
    assert manifest["appliance"]["name"] == "web" and manifest["appliance"]["template"] == TEMPLATE
    wg0 = texts["wireguard/wg0.conf"].decode()
    assert "\nPrivateKey" not in wg0 and "# PrivateKey = <" in wg0
    assert f"Address = {web.peer.ipv4}/32" in wg0
    user_data = texts["cloud-init/user-data"].decode()
    private_key = unseal(web.wg_private_key_sealed).decode()
    assert private_key not in wg0
    for secret in ("hunter2", "s3cr3t-token", "phone-home", private_key):
        assert secret not in user_data, f"{secret} leaked into the archive's user-data"
    assert "exported" in user_data, "the owner's public files stay"

    # --- verify: our command, and standard tools against the manifest ----------------------------
    path = tmp_path / f"appliance-{web_id}.tar.gz"
    path.write_bytes(body)
    out = io.StringIO()
    call_command("appliance_verify", str(path), stdout=out)
    assert f"archive sha256 {sha256}" in out.getvalue() and "disk.qcow2: OK" in out.getvalue()
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "xzf", str(path), "-C", str(unpacked)], check=True)
    sums = "".join(f"{entry['sha256']}  {name}\n" for name, entry in manifest["files"].items())
    checked = subprocess.run(["sha256sum", "-c", "-"], input=sums, text=True, capture_output=True, cwd=unpacked)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count(": OK") == 5
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(unpacked / "disk.qcow2")],
                                     check=True, capture_output=True, text=True).stdout)
    assert "backing-filename" not in info, "the disk stands alone"
    assert info["virtual-size"] == 3 * 2**30

    # --- import as a new appliance, with another key: it boots, phones home, joins the mesh -------
    with open(path, "rb") as upload:
        response = alice_api.post(f"{API}/appliances/import", {
            "archive": upload, "name": "web-copy",
            "ssh_authorized_keys": [ssh_public_key(tmp_path, "ecdsa")],
        })
    assert response.status_code == 201, response.content
    copy_id = response.json()["id"]
    assert copy_id != web_id and response.json()["name"] == "web-copy"
    copy = wait_for(copy_id, "ready", BOOT_TIMEOUT)
    print(f"the import ready after {time.monotonic() - began:.0f} s")
    assert copy.phoned_home_at is not None and copy.imported_from == sha256
    assert copy.peer_id != web.peer_id and copy.peer.ipv4 != web.peer.ipv4
    code, marker, _ = in_guest(copy, "cat", "/var/tmp/marker")
    assert code == 0 and marker.strip() == "from-the-original", "the copy runs the exported disk"
    code, hostname, _ = in_guest(copy, "hostname")
    assert hostname.strip() == "web-copy"
    code, addresses, _ = in_guest(copy, "ip", "-4", "-o", "address", "show", "dev", "wg0")
    assert code == 0 and copy.peer.ipv4 in addresses and web.peer.ipv4 not in addresses
    laptop = Up(mesh, "laptop", owner=alice)
    mesh.wait_applied()
    laptop.bring_up()
    laptop.node.ping_until_ok(copy.peer.ipv4, timeout=90)

    # --- a stopped appliance exports to the same bytes twice -------------------------------------
    assert alice_api.post(f"{API}/appliances/{web_id}/shutdown").status_code == 202
    wait_for(web_id, "stopped", 180)
    # The status says stopped a moment before the shutdown job settles; until
    # then an export is refused as busy (409).
    wait_for_job(web_id, "shutdown")
    digests = []
    for _ in range(2):
        assert alice_api.post(f"{API}/appliances/{web_id}/archive").status_code == 202
        job = wait_for_job(web_id, "export", timeout=600)
        assert job.result["consistency"]["method"] == "stopped"
        print("export of a stopped appliance:", job.result)
        digests.append(job.result["sha256"])
    assert digests[0] == digests[1], "two exports of a stopped appliance differ"
    # Retention keeps the newest two per appliance; the same bytes share one file.
    assert Archive.objects.filter(appliance_id=web_id).count() == 2
    response, again = download(alice_api, web_id)
    assert hashlib.sha256(again).hexdigest() == digests[0]

    # --- deleting the appliance deletes its archives ---------------------------------------------
    archive_dir = Path(settings.ARCHIVE_DIR) / f"appliance-{web_id}"
    assert any(archive_dir.iterdir())
    for appliance_id in (web_id, copy_id):
        assert alice_api.delete(f"{API}/appliances/{appliance_id}").status_code == 202
    deadline = time.monotonic() + 120
    while Appliance.objects.filter(pk__in=[web_id, copy_id]).exists():
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert not archive_dir.exists()
    assert not Archive.objects.exists()
    assert not any((Path(settings.ARCHIVE_DIR) / "imports").iterdir()), "the import's staging is gone"
