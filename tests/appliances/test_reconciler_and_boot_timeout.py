"""The worker's safety nets, against a real libvirt host: the reconciler
(libvirt against the database) and the boot deadline (a guest that never
phones home fails, with its serial log attached)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid as uuidlib
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from appliances import hypervisor, jobs, services
from appliances.models import Appliance, Host, Operation
from tests.appliances.conftest import TEMPLATE, ensure_catalog
from tests.people import person


@pytest.fixture()
def host(libvirt_hosts, transactional_db, settings):
    ensure_catalog()
    fixture_host = libvirt_hosts.first
    fixture_host.storage_dir.mkdir(mode=0o750, exist_ok=True)
    os.chown(fixture_host.storage_dir, fixture_host.uid, fixture_host.gid)
    row = Host.objects.create(
        name="reconciled", libvirt_uri=fixture_host.uri, queue="host.test-reconciled", vcpus=4, memory_mib=4096,
        disk_gib=20, storage_dir=str(fixture_host.storage_dir), image_cache_dir=str(settings.IMAGE_CACHE_DIR),
    )
    yield row
    libvirt_hosts.remove_all_domains()
    # The host's storage is shared by the session's tests: leave it empty.
    for path in fixture_host.storage_dir.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def an_appliance(name: str, status: str) -> Appliance:
    appliance = services.appliance_create(actor=person(name), name=name, template=TEMPLATE, memory_mib=256)
    Operation.objects.filter(appliance=appliance).update(status="succeeded")
    Appliance.objects.filter(pk=appliance.pk).update(status=status)
    appliance.refresh_from_db()
    return appliance


def tiny_domain(conn, host: Host, images_dir: Path, *, name: str, uuid: str, start: bool) -> None:
    """A real guest with a blank disk (SeaBIOS finds nothing to boot and idles)."""
    base = images_dir / "blank-base.qcow2"
    if not base.exists():
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
        os.chmod(base, 0o644)
    storage = Path(host.storage_dir)
    disk = storage / f"{name}.qcow2"
    hypervisor.create_overlay(backing=base, backing_format="qcow2", path=disk, size_bytes=2**26)
    spec = hypervisor.DomainSpec(name=name, uuid=uuid, title=name, vcpus=1, memory_mib=64, accel="tcg",
                                 disk=str(disk), seed_iso=None, serial_log=str(storage / f"{name}.log"))
    domain = hypervisor.define_and_start(conn, hypervisor.domain_xml(spec))
    if not start:
        domain.destroy()


def test_the_reconciler_fails_vanished_vms_corrects_stale_states_and_flags_strangers(host, libvirt_hosts):
    vanished = an_appliance("vanished", "ready")
    stopped_on_its_own = an_appliance("halted", "ready")
    running_again = an_appliance("revived", "stopped")
    images = libvirt_hosts.images_dir
    conn = hypervisor.connect(host.libvirt_uri)
    try:
        for appliance, running in ((stopped_on_its_own, False), (running_again, True)):
            tiny_domain(conn, host, images, name=appliance.domain_name, uuid=str(appliance.domain_uuid), start=running)
        tiny_domain(conn, host, images, name="infrasim-999999", uuid=str(uuidlib.uuid4()), start=True)
    finally:
        conn.close()

    report = jobs.reconcile_host(host.pk)

    assert report["vanished"] == [vanished.pk]
    assert sorted(report["corrected"]) == sorted([stopped_on_its_own.pk, running_again.pk])
    assert report["unknown"] == ["infrasim-999999"]
    assert Appliance.objects.get(pk=vanished.pk).status == "failed"
    assert "no domain" in Appliance.objects.get(pk=vanished.pk).last_error
    assert Appliance.objects.get(pk=stopped_on_its_own.pk).status == "stopped"
    assert Appliance.objects.get(pk=running_again.pk).status == "ready"
    host.refresh_from_db()
    assert "infrasim-999999" in host.last_error and host.last_seen_at is not None
    assert host.facts.get("libvirt_version")
    # The stranger is flagged, never destroyed: it may be someone else's.
    conn = hypervisor.connect(host.libvirt_uri)
    try:
        assert "infrasim-999999" in [d["name"] for d in hypervisor.list_domains(conn)]
    finally:
        conn.close()
    assert jobs.reconcile_host(host.pk) == {"vanished": [], "corrected": [], "unknown": ["infrasim-999999"]}


def test_a_guest_that_never_phones_home_fails_at_its_deadline_with_its_serial_log(host):
    appliance = an_appliance("silent", "booting")
    log = jobs.paths_on(host, appliance).serial_log
    log.parent.mkdir(parents=True)
    log.write_text("SeaBIOS (version 1.16)\nBooting from Hard Disk...\nKernel panic - not syncing: VFS\n")
    Appliance.objects.filter(pk=appliance.pk).update(boot_deadline=timezone.now() + timedelta(seconds=60))

    jobs.watch_boot(appliance.pk)
    assert Appliance.objects.get(pk=appliance.pk).status == "booting", "failed before its deadline"

    Appliance.objects.filter(pk=appliance.pk).update(boot_deadline=timezone.now() - timedelta(seconds=1))
    jobs.watch_boot(appliance.pk)
    appliance.refresh_from_db()
    assert appliance.status == "failed"
    assert "did not phone home" in appliance.last_error
    assert "Kernel panic" in appliance.failure_console_log
