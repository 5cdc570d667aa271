"""The worker side of a memory capture: the appliance's `memory_dump` job,
run on its host (registered with appliances.jobs in ForensicsConfig.ready).

Steps, each safe to run again after a killed worker:
1. dump: QMP dump-guest-memory into a pipe we read, hashing every byte as it
   arrives, into a staging file with a fixed name (a retry clears it first);
2. place: rename into the content-addressed store, read-only;
3. sign and log: the statement signed with the requester's key and appended to
   the transparency log in the same transaction that marks it complete.
"""

from __future__ import annotations

import logging
import time
from datetime import timezone as dt_timezone

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from appliances import hypervisor
from appliances.jobs import TRANSIENT, Permanent
from appliances.models import Appliance, Operation
from forensics import attestation, evidence, keys, ledger, memory_dump
from forensics.models import Acquisition
from forensics.services import push
from forensics.signatures import sign_envelope
from identity.providers import provider_for
from identity.providers.errors import ProviderError
from infrasim_site.events import publish_to_user

log = logging.getLogger(__name__)


def _iso(moment) -> str | None:
    return moment.astimezone(dt_timezone.utc).isoformat().replace("+00:00", "Z") if moment else None


def _set_phase(acquisition: Acquisition, phase: str) -> None:
    Acquisition.objects.filter(pk=acquisition.pk).update(phase=phase)
    acquisition.phase = phase
    push(acquisition)


def _progress(op: Operation, acquisition: Acquisition, every_s: float = 0.5):
    """Percent to the job row, the requester's pages and (as a job on their
    appliance) the owner's."""
    last = [0.0]

    def report(percent: int) -> None:
        if time.monotonic() - last[0] < every_s and percent < 100:
            return
        last[0] = time.monotonic()
        percent = max(0, min(int(percent * 0.95), 95))  # signing and logging are the last 5%
        Operation.objects.filter(pk=op.pk).update(progress=percent)
        acquisition.operation.progress = percent
        push(acquisition)
        appliance = acquisition.appliance
        if appliance is not None and appliance.owner_id != acquisition.requested_by_id:
            publish_to_user(appliance.owner_id, kind="appliance.operation", data={
                "id": appliance.pk, "operation": op.pk, "kind": op.kind, "progress": percent,
                "detail": f"capturing memory: {percent}%",
            })

    return report


def custody_record(acquisition: Acquisition, appliance: Appliance, dump: memory_dump.DumpResult,
                   key_id: str, handle: str, location: str) -> dict:
    """The predicate: everything a court or a colleague asks about the capture."""
    return {
        "case": {"reference": acquisition.case_ref, "reason": acquisition.reason},
        "operator": {"handle": handle, "user": acquisition.requested_by_id, "keyid": key_id,
                     "role": "operator" if acquisition.requested_by and acquisition.requested_by.is_staff else "owner"},
        "appliance": {
            "id": appliance.pk, "name": appliance.name, "owner": appliance.owner_id,
            "host": appliance.host.name, "vm_uuid": dump.vm_uuid, "domain_xml_sha256": dump.domain_xml_sha256,
        },
        "acquisition": {
            "id": acquisition.pk,
            "format": dump.format,
            "ram_bytes": dump.ram_bytes,
            "memory_total": dump.memory_total,
            "qemu_version": dump.qemu_version,
            "libvirt_version": dump.libvirt_version,
            "dump_arguments": dump.arguments,
            "started_at": _iso(dump.started_at),
            "finished_at": _iso(dump.finished_at),
            "guest_paused": {"from": _iso(dump.paused_from), "until": _iso(dump.paused_until)},
            "tool": f"InfraSim {settings.INFRASIM_VERSION}",
        },
        "evidence": {"name": acquisition.evidence_name, "size": dump.size, "sha256": dump.sha256,
                     "location": location},
    }


def run_dump(op: Operation, appliance: Appliance) -> dict:
    acquisition = Acquisition.objects.select_related("requested_by", "operation", "signing_key").get(operation=op)
    try:
        return _capture(op, appliance, acquisition)
    except (ValueError, memory_dump.DumpCancelled) as exc:  # a format QEMU cannot write, or a cancel: final
        _tell_requester(acquisition, "failed", str(exc))
        raise Permanent(str(exc)) from exc
    except Exception as exc:
        retrying = isinstance(exc, TRANSIENT) and op.attempts < op.max_attempts()
        _tell_requester(acquisition, "retrying" if retrying else "failed", str(exc))
        raise


def _tell_requester(acquisition: Acquisition, status: str, error: str) -> None:
    """The job runner settles the row after this returns; the page hears now."""
    if acquisition.requested_by_id:
        publish_to_user(acquisition.requested_by_id, kind="forensics.acquisition", data={
            "id": acquisition.pk, "status": status, "progress": 0, "sha256": "", "error": error[:300]})


def _capture(op: Operation, appliance: Appliance, acquisition: Acquisition) -> dict:
    acquisition.appliance = appliance
    if acquisition.phase == Acquisition.Phase.COMPLETE:
        return _result(acquisition)  # a redelivery after the last step committed
    cleared = evidence.clear_staging(acquisition.pk)
    if cleared:
        log.warning("acquisition %s: removed %s left by an earlier attempt", acquisition.pk, ", ".join(cleared))
    requester = acquisition.requested_by
    if requester is None:
        raise Permanent("the requester's account is gone; nobody can sign this capture")
    _set_phase(acquisition, Acquisition.Phase.DUMPING)
    staged = evidence.staging_path(acquisition.pk)
    with hypervisor.connection(appliance.host.libvirt_uri) as conn:
        dump = memory_dump.acquire(conn, str(appliance.domain_uuid), destination=staged, fmt=acquisition.format,
                                   on_progress=_progress(op, acquisition))
    seal_and_log(acquisition, appliance, dump, requester)
    _copy_to_bucket(acquisition)
    return _result(acquisition)


def seal_and_log(acquisition: Acquisition, appliance: Appliance, dump: memory_dump.DumpResult, requester) -> None:
    """Store the finished dump, sign its statement and log the attestation;
    the log entry and `complete` commit together, so evidence is never
    complete without its entry, nor logged twice."""
    stored = evidence.place(dump.path, dump.sha256)
    _set_phase(acquisition, Acquisition.Phase.SIGNING)
    key = keys.current_key(requester)
    custody = custody_record(acquisition, appliance, dump, key.key_id, keys.handle_of(requester) or key.handle,
                             evidence.relative(stored))
    envelope = sign_envelope(
        attestation.statement(subject_name=acquisition.evidence_name, sha256=dump.sha256, custody=custody),
        keys.signer(key),
    )
    with transaction.atomic():
        locked = Acquisition.objects.select_for_update().select_related(
            "requested_by", "operation", "signing_key").get(pk=acquisition.pk)
        locked.appliance = appliance
        locked.custody, locked.envelope, locked.signing_key = custody, envelope, key
        locked.size, locked.sha256, locked.evidence_path = dump.size, dump.sha256, str(stored)
        entry = ledger.record(kind=attestation.ATTESTATION_KIND, actor=ledger.actor_label(requester),
                              subject=f"acquisition:{locked.pk}", concerns=requester.pk,
                              payload=attestation.log_payload(locked))
        locked.log_index = entry.index
        locked.phase, locked.completed_at = Acquisition.Phase.COMPLETE, timezone.now()
        locked.save()
        push(locked)
    acquisition.__dict__.update({k: v for k, v in locked.__dict__.items() if not k.startswith("_")})


def _copy_to_bucket(acquisition: Acquisition) -> None:
    """The optional off-host copy. The capture is complete without it: a
    failure is shown on the acquisition, not retried into a second dump."""
    if not settings.FORENSICS_COPY_TO_S3:
        return
    provider = provider_for("s3")
    identity = getattr(acquisition.requested_by, "identity", None)
    if provider is None or identity is None or not identity.handle:
        Acquisition.objects.filter(pk=acquisition.pk).update(
            s3_location="not copied: no S3 provider or no handle for the requester")
        return
    key = f"forensics/{acquisition.evidence_name}"
    try:
        where = provider.upload_file(identity.handle, key, acquisition.evidence_path, metadata={
            "sha256": acquisition.sha256, "case-ref": acquisition.case_ref, "acquisition": str(acquisition.pk)})
    except ProviderError as exc:  # shown to the operator; the local evidence stands
        log.warning("acquisition %s: S3 copy failed: %s", acquisition.pk, exc)
        where = f"not copied: {exc}"[:500]
    Acquisition.objects.filter(pk=acquisition.pk).update(s3_location=where[:500])


def _result(acquisition: Acquisition) -> dict:
    return {"acquisition": acquisition.pk, "sha256": acquisition.sha256, "size": acquisition.size,
            "log_index": acquisition.log_index}
