"""Catalog templates that are downloaded, served here by a real HTTP server:
the digest pinned or read from the publisher's checksum list, images inside
an archive (Kali's .tar.xz), and a mismatch that fails the appliance and
leaves nothing in the cache."""

from __future__ import annotations

import functools
import hashlib
import http.server
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from appliances import jobs, services
from appliances.models import Appliance, CacheEntry, Operation, Template
from tests.appliances.conftest import make_host
from tests.people import person


@pytest.fixture()
def served(tmp_path):
    """A directory served over HTTP on loopback: (directory, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def small_image(path: Path, size: str = "3G") -> str:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def host(db, tmp_path):
    return make_host("downloads", image_cache_dir=str(tmp_path / "cache"))


def template(slug: str, url: str, **fields) -> Template:
    return Template.objects.create(slug=slug, name=slug, os="Test OS", source_url=url, min_disk_gib=1, **fields)


def test_a_pinned_digest_downloads_once_and_sets_the_templates_minimum_disk(host, served):
    root, base = served
    digest = small_image(root / "os.qcow2")
    entry = jobs.ensure_cached(host, template("pinned", f"{base}/os.qcow2", checksum=digest))
    assert entry.status == "succeeded" and entry.digest == f"sha256:{digest}"
    assert entry.disk_format == "qcow2" and entry.virtual_size == 3 * 2**30
    assert Template.objects.get(slug="pinned").min_disk_gib == 3
    (root / "os.qcow2").unlink()
    again = jobs.ensure_cached(host, Template.objects.get(slug="pinned"))
    assert again.pk == entry.pk and Path(again.disk_path).exists(), "the second use needs no download"


def test_the_digest_comes_from_the_publishers_checksum_list(host, served):
    root, base = served
    digest = small_image(root / "cloud.img")
    (root / "SHA256SUMS").write_text(f"{'0' * 64}  other.img\n{digest} *cloud.img\n")
    entry = jobs.ensure_cached(host, template("listed", f"{base}/cloud.img", checksum_url=f"{base}/SHA256SUMS"))
    assert entry.digest == f"sha256:{digest}"


def test_an_image_in_a_tarball_is_unpacked_after_the_archive_is_verified(host, served, tmp_path):
    root, base = served
    small_image(tmp_path / "disk.raw.qcow2", size="64M")
    raw = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(tmp_path / "disk.raw.qcow2"), str(raw)], check=True)
    with tarfile.open(root / "kali.tar.xz", "w:xz") as tar:
        tar.add(raw, arcname="kali-linux/disk.raw")
    digest = hashlib.sha256((root / "kali.tar.xz").read_bytes()).hexdigest()
    entry = jobs.ensure_cached(host, template("boxed", f"{base}/kali.tar.xz", checksum=digest))
    assert entry.digest == f"sha256:{digest}" and entry.disk_format == "raw"
    assert entry.virtual_size == 64 * 2**20


def test_a_checksum_mismatch_fails_the_appliance_and_leaves_nothing_cached(host, served):
    root, base = served
    small_image(root / "tampered.qcow2")
    bad = template("tampered", f"{base}/tampered.qcow2", checksum="ab" * 32)
    appliance = services.appliance_create(actor=person("victor"), name="vm", template=bad.slug, disk_gib=3)
    jobs.run_operation(Operation.objects.get(appliance=appliance, kind="create").pk)

    appliance = Appliance.objects.get(pk=appliance.pk)
    assert appliance.status == "failed"
    assert "sha256:" + "ab" * 32 in appliance.last_error, appliance.last_error
    job = Operation.objects.get(appliance=appliance, kind="create")
    assert job.status == "failed" and job.attempts == 1, "a mismatch is not retried"
    entry = CacheEntry.objects.get(host=host, template=bad)
    assert entry.status == "failed" and entry.digest == ""
    cache = Path(host.image_cache_dir)
    assert list((cache / "blobs").iterdir()) == [] and list((cache / "tmp").iterdir()) == []
