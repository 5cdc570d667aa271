"""Appliances: the rules behind every interface (API, console, admin, tasks).

A request never talks to libvirt: it validates, places the appliance on a
host under row locks, and queues one Operation row on that host's queue. The
worker there runs it (appliances.jobs). One unfinished operation per
appliance at a time; the database's constraint is the referee.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from appliances import cloudinit, sshkeys
from appliances.models import Appliance, CacheEntry, Host, Operation, Snapshot, Template
from forensics import ledger
from identity.models import User
from infrasim_site.errors import Conflict, InvalidInput, NotFound, ServiceError
from infrasim_site.events import publish_to_user
from infrasim_site.queueing import enqueue_on_commit
from infrasim_site.sealing import seal
from infrasim_site.steps import UNFINISHED, StepStatus
from infrasim_site.text import clean_name
from mesh import keys as mesh_keys
from mesh import services as mesh_services

@dataclass(frozen=True)
class ImportedDisk:
    """A verified archive, unpacked in `directory` (its disk.qcow2 becomes
    the appliance's disk)."""

    directory: Path
    sha256: str


class Unavailable(ServiceError):
    status_code = 503
    default_code = "host_unavailable"


NAME_MAX = 63
LIMITS = {"vcpus": (1, 32), "memory_mib": (128, 256 * 1024), "disk_gib": (1, 4096)}
SNAPSHOT_NAME_MAX = 63

Status = Appliance.Status
Kind = Operation.Kind


# --- Hosts ------------------------------------------------------------------------------


def _machine_capacity(storage_dir) -> tuple[int, int, int]:
    """This machine's vCPUs, memory (MiB) and free disk (GiB) where overlays go."""
    vcpus = os.cpu_count() or 1
    with open("/proc/meminfo") as meminfo:
        total_kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    # Measured on the nearest existing parent: the directory itself belongs
    # to the hypervisor's user, whose daemon makes it.
    existing = Path(storage_dir)
    while not existing.exists():
        existing = existing.parent
    disk = shutil.disk_usage(existing)
    return vcpus, total_kib // 1024, disk.total // 2**30


def host_queue_name(name: str) -> str:
    return f"host.{name}"


def host_register_local() -> Host:
    """The machine `make run` runs on, registered on first start (capacity
    from the machine itself; an operator edits it in the admin afterwards)."""
    name = settings.APPLIANCE_LOCAL_HOST
    existing = Host.objects.filter(name=name).first()
    if existing is not None:
        return existing
    vcpus, memory_mib, disk_gib = _machine_capacity(settings.APPLIANCE_STORAGE_DIR)
    try:
        with transaction.atomic():
            host = Host.objects.create(
                name=name, libvirt_uri=settings.APPLIANCE_LOCAL_LIBVIRT_URI, queue=host_queue_name(name),
                vcpus=vcpus, memory_mib=memory_mib, disk_gib=disk_gib,
                storage_dir=str(settings.APPLIANCE_STORAGE_DIR), image_cache_dir=str(settings.IMAGE_CACHE_DIR),
            )
            ledger.record(kind="appliances.host.registered", actor="system", subject=f"host:{host.pk}",
                          payload={"name": name, "libvirt_uri": host.libvirt_uri})
    except IntegrityError:
        return Host.objects.get(name=name)
    # Acceleration is probed by the first create on it (and the admin's
    # probe action); the reconciler keeps its facts and health current.
    return host


@dataclass(frozen=True)
class Usage:
    count: int
    vcpus: int
    memory_mib: int
    disk_gib: int


def usage(appliances) -> Usage:
    totals = appliances.aggregate(
        vcpus=Coalesce(Sum("vcpus"), 0), memory_mib=Coalesce(Sum("memory_mib"), 0),
        disk_gib=Coalesce(Sum("disk_gib"), 0),
    )
    return Usage(count=appliances.count(), **totals)


def host_usage(host: Host) -> Usage:
    return usage(Appliance.objects.filter(host=host))


def _fits(host: Host, used: Usage, *, vcpus: int, memory_mib: int, disk_gib: int) -> bool:
    return (
        used.vcpus + vcpus <= host.vcpus
        and used.memory_mib + memory_mib <= host.memory_mib
        and used.disk_gib + disk_gib <= host.disk_gib
    )


def _place(template: Template, *, vcpus: int, memory_mib: int, disk_gib: int) -> Host:
    """The enabled host with room, preferring one that caches the template
    already, then the most free memory. Runs with every enabled host's row
    locked, so concurrent creates see each other's appliances."""
    hosts = list(Host.objects.select_for_update().filter(enabled=True).order_by("pk"))
    cached = set(
        CacheEntry.objects.filter(template=template, status=StepStatus.SUCCEEDED).values_list("host_id", flat=True)
    )
    candidates = []
    for host in hosts:
        used = host_usage(host)
        if _fits(host, used, vcpus=vcpus, memory_mib=memory_mib, disk_gib=disk_gib):
            candidates.append((host.pk not in cached, -(host.memory_mib - used.memory_mib), host.pk, host))
    if not candidates:
        raise Conflict(
            "No host has room for this appliance now; try fewer vCPUs, less memory or a smaller disk.",
            field="memory_mib", code="no_capacity",
        )
    return min(candidates)[-1]


# --- Input ------------------------------------------------------------------------------


def _size(value, field: str, *, default: int, minimum: int | None = None) -> int:
    if value is None or value == "":
        value = default
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        else:
            raise InvalidInput("Must be a whole number.", field=field, code="invalid_type")
    low, high = LIMITS[field]
    low = max(low, minimum or low)
    if value < low:
        raise InvalidInput(f"At least {low}.", field=field, code="too_small")
    if value > high:
        raise InvalidInput(f"At most {high}.", field=field, code="too_large")
    return value


def _template(slug) -> Template:
    if not isinstance(slug, str) or not slug:
        raise InvalidInput("Choose a template.", field="template", code="required")
    template = Template.objects.filter(slug=slug, enabled=True).first()
    if template is None:
        raise InvalidInput(f"No template named '{slug[:60]}'.", field="template", code="unknown")
    return template


def _ssh_keys(value) -> list[str]:
    try:
        return sshkeys.clean_authorized_keys(value or [])
    except ValueError as exc:
        raise InvalidInput(str(exc), field="ssh_authorized_keys", code="invalid") from None


def _user_config(text) -> dict | None:
    if text in (None, ""):
        return None
    if not isinstance(text, str):
        raise InvalidInput("Must be cloud-config text.", field="user_data", code="invalid_type")
    try:
        return cloudinit.parse_cloud_config(text)
    except cloudinit.CloudConfigInvalid as exc:
        raise InvalidInput("; ".join(exc.problems), field="user_data", code="invalid_cloud_config") from None


def _check_quota(owner: User, *, vcpus: int, memory_mib: int, disk_gib: int) -> None:
    used = usage(Appliance.objects.filter(owner=owner))
    checks = [
        ("name", used.count + 1, settings.APPLIANCE_QUOTA_COUNT, "appliances", ""),
        ("vcpus", used.vcpus + vcpus, settings.APPLIANCE_QUOTA_VCPUS, "vCPUs", ""),
        ("memory_mib", used.memory_mib + memory_mib, settings.APPLIANCE_QUOTA_MEMORY_MIB, "MiB of memory", ""),
        ("disk_gib", used.disk_gib + disk_gib, settings.APPLIANCE_QUOTA_DISK_GIB, "GiB of disk", ""),
    ]
    for field, wanted, limit, unit, _ in checks:
        if wanted > limit:
            raise Conflict(f"Over your quota of {limit} {unit} (this would make {wanted}).", field=field, code="quota")


# --- Phone home ---------------------------------------------------------------------------


def phone_home_token(appliance: Appliance) -> str:
    """Derived, not stored: the guest gets it in its seed, the server
    recomputes it. One-time because a used one moves nothing."""
    message = f"phone-home:{appliance.domain_uuid}".encode()
    return hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256).hexdigest()


def phone_home_url(appliance: Appliance) -> str:
    base = settings.APPLIANCE_PHONE_HOME_URL or f"http://{appliance.host.guest_gateway_address}:{settings.INFRASIM_PORT}"
    return f"{base.rstrip('/')}/api/meshnet/appliances/{appliance.pk}/phone-home/{phone_home_token(appliance)}"


def appliance_phone_home(*, appliance_id: int, token: str) -> bool:
    """The guest finished cloud-init. True when it moved the appliance to ready."""
    with transaction.atomic():
        appliance = Appliance.objects.select_for_update().filter(pk=appliance_id).first()
        if appliance is None or not hmac.compare_digest(phone_home_token(appliance), str(token)):
            raise NotFound("No such appliance.")
        if appliance.phoned_home_at is not None:
            return False
        now = timezone.now()
        appliance.phoned_home_at = now
        fields = ["phoned_home_at"]
        if appliance.status == Status.BOOTING:
            appliance.status, appliance.status_detail, appliance.ready_at = Status.READY, "", now
            appliance.boot_deadline = None
            fields += ["status", "status_detail", "ready_at", "boot_deadline"]
        appliance.save(update_fields=[*fields, "updated_at"])
        _record(appliance, "phoned_home", None, {"status": appliance.status})
        push(appliance)
        return appliance.status == Status.READY


# --- Appliances ---------------------------------------------------------------------------


def push(appliance: Appliance) -> None:
    publish_to_user(appliance.owner_id, kind="appliance.changed", data={
        "id": appliance.pk, "status": appliance.status, "detail": appliance.status_detail,
        "error": appliance.last_error[:300],
    })


def _record(appliance: Appliance, event: str, actor: User | None, payload: dict | None = None) -> None:
    # The owner may read every event of their appliance, also those an
    # operator or the system caused.
    ledger.record(kind=f"appliances.appliance.{event}", actor=ledger.actor_label(actor),
                  subject=f"appliance:{appliance.pk}", payload=payload or {}, concerns=appliance.owner_id)


def peer_name(name: str) -> str:
    return f"appliance {name}"[: mesh_services.PEER_NAME_MAX]


@transaction.atomic
def appliance_create(
    *,
    actor: User,
    name,
    template,
    vcpus=None,
    memory_mib=None,
    disk_gib=None,
    ssh_authorized_keys=None,
    user_data=None,
    imported: ImportedDisk | None = None,
) -> Appliance:
    """`imported`: the disk comes from a verified archive (appliances.exports)
    instead of being a linked clone of the template's image."""
    name = clean_name(name, field="name", max_length=NAME_MAX)
    template = _template(template)
    vcpus = _size(vcpus, "vcpus", default=1)
    memory_mib = _size(memory_mib, "memory_mib", default=max(template.min_memory_mib, 512),
                       minimum=template.min_memory_mib)
    disk_gib = _size(disk_gib, "disk_gib", default=template.default_disk_gib, minimum=template.min_disk_gib)
    ssh_keys = _ssh_keys(ssh_authorized_keys)
    user_config = _user_config(user_data)

    # The owner's row serializes this user's creates (quota); the host rows
    # serialize everybody's placement (capacity).
    User.objects.select_for_update().get(pk=actor.pk)
    if Appliance.objects.filter(owner=actor, name=name).exists():
        raise Conflict(f"You already have an appliance named '{name}'.", field="name", code="duplicate_name")
    _check_quota(actor, vcpus=vcpus, memory_mib=memory_mib, disk_gib=disk_gib)
    host = _place(template, vcpus=vcpus, memory_mib=memory_mib, disk_gib=disk_gib)

    private_key, public_key = mesh_keys.generate_keypair()
    try:
        created = mesh_services.peer_create(actor=actor, name=peer_name(name), public_key=public_key)
    except Conflict as exc:
        raise Conflict(f"The appliance's mesh peer: {exc.message}", field="name", code=exc.code) from None
    appliance = Appliance.objects.create(
        owner=actor, name=name, template=template, host=host, vcpus=vcpus, memory_mib=memory_mib,
        disk_gib=disk_gib, ssh_authorized_keys=ssh_keys, user_data=user_data or "", peer=created.peer,
        wg_private_key_sealed=seal(private_key.encode()), imported_from=imported.sha256 if imported else "",
    )
    # The whole user-data, merged with the owner's, must pass cloud-init's
    # schema now: a bad one is the owner's 400, not a guest that never boots.
    try:
        cloudinit.build_user_data(
            hostname=cloudinit.hostname_for(name), ssh_authorized_keys=ssh_keys,
            wg0_conf=guest_wg_config(appliance, private_key=private_key), phone_home_url=phone_home_url(appliance),
            user_config=user_config,
        )
    except cloudinit.CloudConfigInvalid as exc:
        raise InvalidInput("; ".join(exc.problems), field="user_data", code="invalid_cloud_config") from None
    _record(appliance, "created", actor, {
        "name": name, "template": template.slug, "host": host.name, "vcpus": vcpus, "memory_mib": memory_mib,
        "disk_gib": disk_gib, "peer": created.peer.pk, **({"archive": imported.sha256} if imported else {}),
    })
    _queue(appliance, Kind.CREATE, actor, {"import_dir": str(imported.directory)} if imported else None)
    push(appliance)
    return appliance


def guest_wg_config(appliance: Appliance, *, private_key: str) -> str:
    """The appliance's wg0.conf: its own mesh peer, dialling the gateway as
    guests on its host reach it."""
    peer = appliance.peer
    network = peer.network
    endpoint = appliance.host.mesh_endpoint or f"{appliance.host.guest_gateway_address}:{network.listen_port}"
    return mesh_services.render_peer_config(peer, private_key=private_key, endpoint=endpoint)


def _own(actor: User, appliance_id, *, lock: bool = False) -> Appliance:
    scope = Appliance.objects.visible_to(actor)
    if lock:
        scope = scope.select_for_update()
    appliance = scope.select_related("host", "template").filter(pk=appliance_id).first()
    if appliance is None:
        raise NotFound("No such appliance.")
    return appliance


def _queue(
    appliance: Appliance, kind: str, actor: User | None, params: dict | None = None, *, queue: str | None = None
) -> Operation:
    try:
        with transaction.atomic():
            operation = Operation.objects.create(
                appliance=appliance, kind=kind, actor=actor, params=params or {},
                queue_name=queue or appliance.host.queue,
            )
    except IntegrityError:
        busy = appliance.operations.filter(status__in=UNFINISHED).first()
        doing = busy.get_kind_display() if busy else "another job"
        raise Conflict(f"'{appliance.name}' is busy ({doing}); try again when it is done.",
                       field="appliance", code="busy") from None
    enqueue_on_commit(Operation.task_name, (operation.pk,), queue=operation.queue_name)
    return operation


# What each operation needs the appliance to be, and what it says otherwise.
ALLOWED_FROM = {
    Kind.START: ({Status.STOPPED, Status.FAILED}, "It is already running, or still being made."),
    Kind.SHUTDOWN: ({Status.READY, Status.BOOTING}, "It is not running."),
    Kind.REBOOT: ({Status.READY, Status.BOOTING}, "It is not running."),
    Kind.POWEROFF: ({Status.READY, Status.BOOTING, Status.FAILED}, "It is not running."),
    Kind.MIGRATE: ({Status.READY}, "Only a running (ready) appliance moves live; start it first."),
    Kind.SNAPSHOT_CREATE: ({Status.READY, Status.STOPPED}, "Only a ready or stopped appliance can be snapshotted."),
    Kind.SNAPSHOT_REVERT: ({Status.READY, Status.STOPPED, Status.FAILED}, "It is being changed."),
    Kind.SNAPSHOT_DELETE: ({Status.READY, Status.STOPPED, Status.FAILED}, "It is being changed."),
    Kind.EXPORT: ({Status.READY, Status.STOPPED}, "An appliance is exported when it is ready or stopped."),
    Kind.MEMORY_DUMP: ({Status.READY, Status.BOOTING}, "Only a running appliance has memory to capture."),
}


@transaction.atomic
def appliance_act(
    *, actor: User, appliance_id: int, kind: str, params: dict | None = None, queue: str | None = None
) -> Operation:
    """Queue start, shutdown, reboot, poweroff (and the snapshot and migrate
    jobs below) after checking that the appliance is in a state that allows it."""
    appliance = _own(actor, appliance_id, lock=True)
    allowed, why = ALLOWED_FROM[kind]
    if appliance.status not in allowed:
        raise Conflict(f"Cannot {Kind(kind).label} '{appliance.name}' while it is {appliance.get_status_display()}. {why}",
                       field="status", code="invalid_state")
    operation = _queue(appliance, kind, actor, params, queue=queue)
    _record(appliance, f"{kind}_requested", actor, params)
    return operation


@transaction.atomic
def appliance_delete(*, actor: User, appliance_id: int) -> Appliance:
    """Deleting wins over whatever is queued: the appliance shows `deleting`
    at once and jobs not yet started are cancelled. A job that runs stops at
    its next step and, as it settles, queues the delete (appliances.jobs);
    the delete job removes the domain, its files and its mesh peer."""
    appliance = _own(actor, appliance_id, lock=True)
    if appliance.status != Status.DELETING:
        appliance.status, appliance.status_detail = Status.DELETING, "waiting for the host"
        appliance.save(update_fields=["status", "status_detail", "updated_at"])
        appliance.operations.filter(status__in=[StepStatus.PENDING, StepStatus.RETRYING]).update(
            status=StepStatus.FAILED, last_error="cancelled: the appliance is being deleted",
            finished_at=timezone.now(),
        )
        _record(appliance, "delete_requested", actor)
        push(appliance)
    if not appliance.operations.filter(status__in=UNFINISHED).exists():
        _queue(appliance, Kind.DELETE, actor)
    return appliance


def queue_delete_if_requested(appliance: Appliance) -> None:
    """After a job settles: the delete that waited for it."""
    with transaction.atomic():
        appliance = Appliance.objects.select_for_update().select_related("host").filter(pk=appliance.pk).first()
        if appliance and appliance.status == Status.DELETING and not appliance.operations.filter(
            status__in=UNFINISHED
        ).exists():
            _queue(appliance, Kind.DELETE, None)


def snapshot_request(*, actor: User, appliance_id: int, name, description="") -> Operation:
    name = clean_name(name, field="name", max_length=SNAPSHOT_NAME_MAX)
    description = clean_name(description, field="description", max_length=200, required=False)
    if not all(ch.isalnum() or ch in "-_." for ch in name):
        raise InvalidInput("Letters, digits, '-', '_' and '.' only.", field="name", code="invalid_characters")
    with transaction.atomic():
        appliance = _own(actor, appliance_id, lock=True)
        if appliance.snapshots.filter(name=name).exists():
            raise Conflict(f"'{appliance.name}' already has a snapshot named '{name}'.", field="name",
                           code="duplicate_name")
        return appliance_act(actor=actor, appliance_id=appliance.pk, kind=Kind.SNAPSHOT_CREATE,
                             params={"name": name, "description": description})


def _own_snapshot(actor: User, appliance_id, snapshot_id) -> Snapshot:
    snapshot = Snapshot.objects.visible_to(actor).filter(appliance_id=appliance_id, pk=snapshot_id).first()
    if snapshot is None:
        raise NotFound("No such snapshot.")
    return snapshot


def snapshot_revert_request(*, actor: User, appliance_id: int, snapshot_id: int) -> Operation:
    snapshot = _own_snapshot(actor, appliance_id, snapshot_id)
    return appliance_act(actor=actor, appliance_id=appliance_id, kind=Kind.SNAPSHOT_REVERT,
                         params={"snapshot": snapshot.pk, "name": snapshot.name})


def snapshot_delete_request(*, actor: User, appliance_id: int, snapshot_id: int) -> Operation:
    snapshot = _own_snapshot(actor, appliance_id, snapshot_id)
    return appliance_act(actor=actor, appliance_id=appliance_id, kind=Kind.SNAPSHOT_DELETE,
                         params={"snapshot": snapshot.pk, "name": snapshot.name})


@transaction.atomic
def migrate_request(*, actor: User, appliance_id: int, host) -> Operation:
    appliance = _own(actor, appliance_id, lock=True)
    if host in (None, ""):
        target = _migration_target(appliance)
    else:
        target = Host.objects.select_for_update().filter(name=host, enabled=True).first() if isinstance(host, str) else None
        if target is None:
            raise InvalidInput("No such host, or it takes no appliances now.", field="host", code="unknown")
    if target.pk == appliance.host_id:
        raise InvalidInput(f"'{appliance.name}' is on {target.name} already.", field="host", code="same_host")
    if not _fits(target, host_usage(target), vcpus=appliance.vcpus, memory_mib=appliance.memory_mib,
                 disk_gib=appliance.disk_gib):
        raise Conflict(f"{target.name} has no room for '{appliance.name}'.", field="host", code="no_capacity")
    if appliance.snapshots.exists():
        raise Conflict("libvirt cannot migrate a VM that has snapshots; delete them first.",
                       field="appliance", code="has_snapshots")
    # The target host's worker prepares the disk first; the source's then moves the VM.
    return appliance_act(actor=actor, appliance_id=appliance.pk, kind=Kind.MIGRATE, queue=target.queue,
                         params={"target_host": target.pk, "target_name": target.name, "phase": "prepare"})


def _migration_target(appliance: Appliance) -> Host:
    for host in Host.objects.select_for_update().filter(enabled=True).exclude(pk=appliance.host_id).order_by("pk"):
        if _fits(host, host_usage(host), vcpus=appliance.vcpus, memory_mib=appliance.memory_mib,
                 disk_gib=appliance.disk_gib):
            return host
    raise Conflict("No other host has room for this appliance.", field="host", code="no_capacity")


def template_min_disk_gib(virtual_size: int) -> int:
    return max(1, math.ceil(virtual_size / 2**30))


def snapshot_support(appliance: Appliance) -> dict:
    """What a snapshot of this appliance holds, said up front: its disk
    always (an internal snapshot of the qcow2 overlay); its memory when it
    runs (libvirt saves the VM state into the same qcow2)."""
    running = appliance.status == Status.READY
    return {
        "disk": True,
        "memory": running,
        "note": "A running appliance's snapshot holds its memory too; revert resumes it where it was."
        if running else "A stopped appliance's snapshot holds its disk only.",
        "migration": "An appliance with snapshots cannot migrate (libvirt refuses); delete them first.",
    }


def console_log(*, actor: User, appliance_id: int) -> str:
    """The serial console's last lines. The log is a file on the VM's host,
    so its worker reads it; the caller waits for the answer."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    from infrasim_site.celery import app

    appliance = _own(actor, appliance_id)
    result = app.send_task("appliances.tasks.console_log", args=[appliance.pk], queue=appliance.host.queue)
    try:
        return result.get(timeout=settings.APPLIANCE_HOST_ANSWER_SECONDS)
    except CeleryTimeout:
        raise Unavailable(f"Host {appliance.host.name} did not answer within {settings.APPLIANCE_HOST_ANSWER_SECONDS} s.") from None
    finally:
        result.forget()

