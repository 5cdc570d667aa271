"""Acquisitions without a hypervisor, for the request-side tests: the job's
last step (store, sign, log) runs on a dump file the test writes, exactly as
the worker runs it on QEMU's. The real dump is tested with real VMs."""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta

from django.utils import timezone

from appliances.models import Appliance, Host, Operation
from appliances.services import appliance_create
from forensics import evidence, jobs, memory_dump, services
from forensics.models import Acquisition
from tests.appliances.conftest import ensure_catalog


def a_running_appliance(owner, name: str | None = None) -> Appliance:
    """A ready appliance whose jobs wait on a queue no worker consumes."""
    ensure_catalog()
    name = name or f"suspect-{Appliance.objects.count() + 1}"
    for host in ("forensics-a", "forensics-b"):
        Host.objects.get_or_create(name=host, defaults=dict(
            queue=f"host.test-{host}", vcpus=64, memory_mib=65536, disk_gib=1000, storage_dir="/nonexistent",
            image_cache_dir="/nonexistent",
        ))
    appliance = appliance_create(actor=owner, name=name, template="debian-bookworm-local")
    Operation.objects.filter(appliance=appliance).update(status="succeeded")
    Appliance.objects.filter(pk=appliance.pk).update(status=Appliance.Status.READY)
    appliance.refresh_from_db()
    return appliance


def finish(acquisition: Acquisition, body: bytes = b"\x7fELF not really a core, " * 1000) -> Acquisition:
    """Run the job's last step on `body` as if QEMU had written it."""
    staged = evidence.staging_path(acquisition.pk)
    staged.write_bytes(body)
    now = timezone.now()
    appliance = Appliance.objects.select_related("host", "owner").get(pk=acquisition.appliance_id)
    dump = memory_dump.DumpResult(
        path=staged, size=len(body), sha256=hashlib.sha256(body).hexdigest(), format=acquisition.format,
        arguments=[{"execute": "dump-guest-memory", "arguments": {"paging": False, "protocol": "fd:test"}}],
        started_at=now - timedelta(seconds=2), finished_at=now, paused_from=now - timedelta(seconds=2),
        paused_until=now - timedelta(seconds=1), ram_bytes=len(body), qemu_version="test", libvirt_version="test",
        domain_xml_sha256="0" * 64, vm_uuid=str(appliance.domain_uuid), memory_total=len(body),
    )
    jobs.seal_and_log(acquisition, appliance, dump, acquisition.requested_by)
    Operation.objects.filter(pk=acquisition.operation_id).update(status="succeeded", progress=100)
    acquisition.refresh_from_db()
    assert not os.path.exists(staged)
    return acquisition


def a_complete_acquisition(requester, appliance: Appliance | None = None) -> Acquisition:
    appliance = appliance or a_running_appliance(requester)
    acquisition = services.acquisition_request(actor=requester, appliance_id=appliance.pk, case_ref="CASE-1",
                                               reason="matrix")
    return finish(acquisition)
