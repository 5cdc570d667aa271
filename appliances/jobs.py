"""The worker side of appliance jobs, run on the appliance's host.

Each Operation kind is a handful of idempotent steps: the domain is found by
its UUID, files are (re)made under fixed names, so a redelivered job (its
worker died) simply runs again and ends with one domain and one set of files.
Between steps a create checks whether the owner asked to delete, and stops.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import libvirt
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from appliances import archive, catalog, cloudinit, exports, hypervisor, images, terraform
from appliances.models import Appliance, Archive, CacheEntry, Host, Operation, Snapshot, Template
from appliances.services import (
    _record,
    guest_wg_config,
    phone_home_url,
    push,
    queue_delete_if_requested,
    template_min_disk_gib,
)
from forensics import ledger
from infrasim_site.events import publish_to_user
from infrasim_site.queueing import enqueue_on_commit
from infrasim_site.sealing import unseal
from infrasim_site.steps import Claim, StepStatus
from mesh import services as mesh_services

log = logging.getLogger(__name__)

Status = Appliance.Status
Kind = Operation.Kind
CONSOLE_TAIL_BYTES = 16 * 1024
# Transient: worth another attempt. Anything else fails the job at once.
TRANSIENT = (hypervisor.HypervisorError, libvirt.libvirtError, images.ImageError, OSError)


class Cancelled(Exception):
    """The owner asked to delete the appliance while this job ran."""


class Permanent(Exception):
    """An error that another attempt cannot fix (a checksum mismatch)."""


# --- Paths and status ---------------------------------------------------------------------


@dataclass(frozen=True)
class Paths:
    directory: Path
    disk: Path
    seed: Path
    serial_log: Path


def paths_on(host: Host, appliance: Appliance) -> Paths:
    directory = Path(host.storage_dir) / appliance.domain_name
    return Paths(directory, directory / "disk.qcow2", directory / "seed.iso", directory / "serial.log")


def _directory_like_parent(directory: Path) -> None:
    """The host's storage directory may belong to its libvirt daemon's Unix
    user (a session daemon per user); what we make inside belongs to it too."""
    directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    parent = directory.parent.stat()
    shutil.chown(directory, parent.st_uid, parent.st_gid)


def _chown_like_parent(path: Path) -> None:
    parent = path.parent.stat()
    shutil.chown(path, parent.st_uid, parent.st_gid)


def set_status(appliance: Appliance, status: str | None = None, detail: str | None = None, **fields) -> Appliance:
    """Record a step change (in the database, the ledger and the owner's open
    pages). Refuses to move an appliance the owner is deleting."""
    with transaction.atomic():
        current = Appliance.objects.select_for_update().get(pk=appliance.pk)
        if current.status == Status.DELETING and status != Status.DELETING:
            raise Cancelled()
        changed = ["status_detail", "updated_at", *fields]
        if status is not None:
            current.status = status
            changed.append("status")
        current.status_detail = (detail or "")[:200]
        for name, value in fields.items():
            setattr(current, name, value)
        # A first boot that phoned home before the worker got to record `booting`.
        if (current.status == Status.BOOTING and current.phoned_home_at and current.ready_at is None
                and "boot_deadline" in fields):
            current.status, current.ready_at, current.boot_deadline = Status.READY, timezone.now(), None
            changed += ["ready_at", "boot_deadline"]
        current.save(update_fields=list(dict.fromkeys(changed)))
        if status is not None:
            _record(current, f"status.{current.status}", None, {"detail": current.status_detail})
        push(current)
    appliance.__dict__.update({k: v for k, v in current.__dict__.items() if not k.startswith("_")})
    return appliance


def _check_not_deleting(appliance: Appliance) -> None:
    if Appliance.objects.filter(pk=appliance.pk, status=Status.DELETING).exists():
        raise Cancelled()


# --- The image cache ------------------------------------------------------------------------


def ensure_cached(host: Host, template: Template, on_detail=None) -> CacheEntry:
    """The template's image in this host's cache: downloaded and verified, or
    built, once (the image module's file locks make concurrent first uses
    wait for one download)."""
    entry, _ = CacheEntry.objects.get_or_create(host=host, template=template)
    if entry.ready and Path(entry.disk_path).exists():
        return entry
    say = on_detail or (lambda text: None)
    CacheEntry.objects.filter(pk=entry.pk).exclude(status=StepStatus.RUNNING).update(
        status=StepStatus.RUNNING, started_at=timezone.now(), attempts=entry.attempts + 1
    )
    cache_dir = Path(host.image_cache_dir)

    def detail(text: str) -> None:
        CacheEntry.objects.filter(pk=entry.pk).update(detail=text[:200])
        say(text)

    try:
        if template.recipe:
            detail(f"building {template.slug} (first use on this host; a few minutes)")
            image = images.build_local(
                template.recipe, cache_dir=cache_dir, mirror=settings.IMAGE_DEBIAN_MIRROR or None,
                progress=lambda phrase: detail(f"building {template.slug}: {phrase}"),
            )
        else:
            expected = template.checksum or catalog.published_checksum(
                template.checksum_url, template.source_url, algorithm=template.checksum_algorithm
            )
            reporter = _download_reporter(detail, template.slug)
            image = images.fetch(template.source_url, algorithm=template.checksum_algorithm, expected=expected,
                                 cache_dir=cache_dir, progress=reporter)
    except images.ChecksumMismatch as exc:
        CacheEntry.objects.filter(pk=entry.pk).update(status=StepStatus.FAILED, last_error=str(exc)[:2000],
                                                      detail="", finished_at=timezone.now())
        raise Permanent(str(exc)) from exc
    except Exception as exc:
        CacheEntry.objects.filter(pk=entry.pk).update(status=StepStatus.RETRYING, last_error=str(exc)[:2000],
                                                      detail="")
        raise
    CacheEntry.objects.filter(pk=entry.pk).update(
        status=StepStatus.SUCCEEDED, digest=image.digest, disk_path=str(image.disk), disk_format=image.format,
        kernel_path=str(image.kernel or ""), initrd_path=str(image.initrd or ""), size=image.size,
        virtual_size=image.virtual_size, detail="", last_error="", finished_at=timezone.now(),
    )
    minimum = template_min_disk_gib(image.virtual_size)
    Template.objects.filter(pk=template.pk, min_disk_gib__lt=minimum).update(min_disk_gib=minimum)
    ledger.record(kind="appliances.image.cached", actor="system", subject=f"host:{host.pk}",
                  payload={"template": template.slug, "digest": image.digest})
    entry.refresh_from_db()
    return entry


def _download_reporter(detail, slug: str):
    last = [0.0]

    def report(done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - last[0] < 1 and done != total:
            return
        last[0] = now
        share = f"{done * 100 // total}%" if total else f"{done // 2**20} MiB"
        detail(f"downloading {slug}: {share}")

    return report


def cache_image(entry_id: int) -> None:
    entry = CacheEntry.objects.select_related("host", "template").filter(pk=entry_id).first()
    if entry is not None:
        try:
            ensure_cached(entry.host, entry.template)
        except Permanent:
            pass


# --- Domains ----------------------------------------------------------------------------------


def _acceleration(host: Host, entry: CacheEntry, conn) -> str:
    if not host.acceleration:
        accel, detail = hypervisor.detect_acceleration(
            conn, kernel=Path(entry.kernel_path) if entry.kernel_path else None,
            initrd=Path(entry.initrd_path) if entry.initrd_path else None,
        )
        Host.objects.filter(pk=host.pk).update(acceleration=accel, acceleration_detail=detail[:2000])
        host.acceleration, host.acceleration_detail = accel, detail
    return host.acceleration


def domain_spec(appliance: Appliance, host: Host, entry: CacheEntry, accel: str) -> hypervisor.DomainSpec:
    paths = paths_on(host, appliance)
    kernel_boot = bool(entry.kernel_path)
    return hypervisor.DomainSpec(
        name=appliance.domain_name,
        uuid=str(appliance.domain_uuid),
        title=f"{appliance.name} ({appliance.owner.get_short_name()})",
        vcpus=appliance.vcpus,
        memory_mib=appliance.memory_mib,
        accel=accel,
        disk=str(paths.disk),
        seed_iso=str(paths.seed),
        serial_log=str(paths.serial_log),
        kernel=entry.kernel_path or None,
        initrd=entry.initrd_path or None,
        cmdline="root=/dev/vda rw console=ttyS0" if kernel_boot else None,
        metadata={"appliance": str(appliance.pk), "owner": str(appliance.owner_id),
                  "template": appliance.template.slug},
    )


def _seed(appliance: Appliance) -> tuple[str, str]:
    """The user-data and meta-data the guest is provisioned with."""
    seed = _cloud_init(appliance, with_secrets=True)
    return seed.user_data, seed.meta_data


@dataclass(frozen=True)
class CloudInit:
    user_data: str
    meta_data: str
    wg0_conf: str
    # What an archive without secrets left out, for its manifest.
    redacted: tuple[str, ...] = ()


def _cloud_init(appliance: Appliance, *, with_secrets: bool) -> CloudInit:
    """The appliance's cloud-init documents and wg0.conf: as provisioned, or
    (for an archive without secrets) with the WireGuard keys replaced by a
    comment that says where they go, no phone-home URL (a credential of this
    instance), and no credentials from the owner's cloud-config."""
    private_key = unseal(appliance.wg_private_key_sealed).decode() if appliance.wg_private_key_sealed else None
    user_config = cloudinit.parse_cloud_config(appliance.user_data) if appliance.user_data else None
    hostname = cloudinit.hostname_for(appliance.name)
    wg0_conf = guest_wg_config(appliance, private_key=private_key) if appliance.peer_id and private_key else ""
    redacted: list[str] = []
    if not with_secrets:
        wg0_conf, redacted = _redact_wg_keys(wg0_conf)
        if user_config:
            user_config, left_out = cloudinit.redact_secrets(user_config)
            redacted += [f"user-data: {path}" for path in left_out]
    user_data = cloudinit.build_user_data(
        hostname=hostname, ssh_authorized_keys=list(appliance.ssh_authorized_keys), wg0_conf=wg0_conf or None,
        phone_home_url=phone_home_url(appliance) if with_secrets else None, user_config=user_config,
    )
    meta_data = cloudinit.build_meta_data(instance_id=appliance.instance_id, hostname=hostname)
    return CloudInit(user_data=user_data, meta_data=meta_data, wg0_conf=wg0_conf, redacted=tuple(redacted))


_WG_SECRET_LINE = re.compile(r"^(PrivateKey|PresharedKey) = .*$", re.MULTILINE)


def _redact_wg_keys(conf: str) -> tuple[str, list[str]]:
    found: list[str] = []

    def comment(match: re.Match) -> str:
        key = match.group(1)
        found.append(f"wg0.conf: {key}")
        if key == "PrivateKey":
            return ("# PrivateKey = <this peer's private key: not in this archive. Export it with "
                    "?secrets=include, or give the peer a new key and put that here>")
        return "# PresharedKey = <the pre-shared key of this peer and the gateway: not in this archive>"

    return _WG_SECRET_LINE.sub(comment, conf), found


def prepare_disk_and_seed(appliance: Appliance, host: Host, entry: CacheEntry, *, fresh_disk: bool = False,
                          import_dir: str | None = None) -> Paths:
    """The linked clone and the seed ISO on `host` (idempotent). A migration
    target gets a fresh, empty overlay: blocks copied by a failed attempt
    must not mix with the next one's."""
    paths = paths_on(host, appliance)
    _directory_like_parent(paths.directory)
    if fresh_disk:
        paths.disk.unlink(missing_ok=True)
    if not paths.disk.exists() and import_dir is not None:
        _take_imported_disk(Path(import_dir) / archive.DISK, paths.disk, size_bytes=appliance.disk_gib * 2**30)
    elif not paths.disk.exists() and appliance.imported_from:
        hypervisor.create_blank(paths.disk, appliance.disk_gib * 2**30)  # a migration target: filled by the copy
    elif not paths.disk.exists():
        hypervisor.create_overlay(backing=Path(entry.disk_path), backing_format=entry.disk_format or "qcow2",
                                  path=paths.disk, size_bytes=appliance.disk_gib * 2**30)
    user_data, meta_data = _seed(appliance)
    # The seed carries the guest's WireGuard private key: only the VM's user reads it.
    cloudinit.write_seed_iso(paths.seed, user_data=user_data, meta_data=meta_data, mode=0o600)
    _chown_like_parent(paths.seed)
    return paths


def _take_imported_disk(source: Path, disk: Path, *, size_bytes: int) -> None:
    """An imported archive's disk becomes the appliance's: moved in (copied
    across filesystems) under a temporary name, owned like its directory,
    grown to the appliance's size, then renamed into place."""
    temporary = disk.with_name(f".{disk.name}.import")
    shutil.move(source, temporary)
    _chown_like_parent(temporary)
    os.chmod(temporary, 0o600)
    if hypervisor.image_info(temporary, "qcow2")["virtual-size"] < size_bytes:
        hypervisor.resize(temporary, size_bytes)
    os.replace(temporary, disk)


def _boot_watch(appliance: Appliance) -> None:
    deadline = timezone.now() + timedelta(seconds=settings.APPLIANCE_BOOT_TIMEOUT_SECONDS)
    first_boot = appliance.phoned_home_at is None
    detail = ("booting; cloud-init phones home when it is done" if first_boot
              else "booting; ready when the guest agent says the boot is over")
    set_status(appliance, Status.BOOTING, detail, boot_deadline=deadline)
    if appliance.status == Status.BOOTING:
        countdown = settings.APPLIANCE_BOOT_TIMEOUT_SECONDS if first_boot else 3
        enqueue_on_commit("appliances.tasks.watch_boot", (appliance.pk,), queue=appliance.host.queue,
                          countdown=countdown)


def _create(op: Operation, appliance: Appliance) -> dict:
    host = appliance.host
    set_status(appliance, Status.PREPARING_IMAGE, "looking for the image in this host's cache")
    entry = ensure_cached(host, appliance.template, on_detail=lambda text: set_status(appliance, detail=text))
    import_dir = op.params.get("import_dir")
    set_status(appliance, Status.PROVISIONING, "taking the archive's disk and making the cloud-init seed" if import_dir
               else "making the linked clone and the cloud-init seed")
    prepare_disk_and_seed(appliance, host, entry, import_dir=import_dir)
    with hypervisor.connection(host.libvirt_uri) as conn:
        xml = hypervisor.domain_xml(domain_spec(appliance, host, entry, _acceleration(host, entry, conn)))
        _check_not_deleting(appliance)
        hypervisor.define_and_start(conn, xml)
    if import_dir:
        shutil.rmtree(import_dir, ignore_errors=True)
    _boot_watch(appliance)
    return {"host": host.name, "image": entry.digest, **({"archive": appliance.imported_from} if import_dir else {})}


def _start(op: Operation, appliance: Appliance) -> dict:
    Appliance.objects.filter(pk=appliance.pk).update(previous_boot_id="")
    appliance.previous_boot_id = ""
    entry = CacheEntry.objects.get(host=appliance.host, template=appliance.template)
    with hypervisor.connection(appliance.host.libvirt_uri) as conn:
        xml = hypervisor.domain_xml(domain_spec(appliance, appliance.host, entry, _acceleration(appliance.host, entry, conn)))
        hypervisor.define_and_start(conn, xml)
    _boot_watch(appliance)
    return {}


def _shutdown(op: Operation, appliance: Appliance) -> dict:
    set_status(appliance, detail="shutting down (ACPI)")
    with hypervisor.connection(appliance.host.libvirt_uri) as conn:
        how = hypervisor.shutdown(conn, str(appliance.domain_uuid), timeout=settings.APPLIANCE_SHUTDOWN_TIMEOUT_SECONDS)
    set_status(appliance, Status.STOPPED, "" if how == "clean" else "forced off after the shutdown timeout")
    return {"shutdown": how}


def _reboot(op: Operation, appliance: Appliance) -> dict:
    with hypervisor.connection(appliance.host.libvirt_uri) as conn:
        boot_id = hypervisor.guest_booted(conn, str(appliance.domain_uuid)) or ""
        Appliance.objects.filter(pk=appliance.pk).update(previous_boot_id=boot_id)
        appliance.previous_boot_id = boot_id
        hypervisor.reboot(conn, str(appliance.domain_uuid))
    _boot_watch(appliance)
    return {}


def _poweroff(op: Operation, appliance: Appliance) -> dict:
    with hypervisor.connection(appliance.host.libvirt_uri) as conn:
        hypervisor.force_off(conn, str(appliance.domain_uuid))
    set_status(appliance, Status.STOPPED, "powered off")
    return {}


def _settled_status(conn, appliance: Appliance) -> str:
    state = hypervisor.domain_state(conn, str(appliance.domain_uuid))
    return Status.READY if state in ("running", "paused") else Status.STOPPED


def _snapshot_create(op: Operation, appliance: Appliance) -> dict:
    name = op.params["name"]
    with hypervisor.connection(appliance.host.libvirt_uri) as conn:
        uuid = str(appliance.domain_uuid)
        if not any(s["name"] == name for s in hypervisor.snapshot_list(conn, uuid)):
            hypervisor.snapshot_create(conn, uuid, name, op.params.get("description", ""))
        info = next(s for s in hypervisor.snapshot_list(conn, uuid) if s["name"] == name)
    Snapshot.objects.get_or_create(appliance=appliance, name=name, defaults={
        "description": op.params.get("description", ""), "with_memory": bool(info.get("memory")),
        "state": info.get("state", ""),
    })
    push(appliance)
    return {"snapshot": name, "memory": bool(info.get("memory"))}


def _snapshot_revert(op: Operation, appliance: Appliance) -> dict:
    with hypervisor.connection(appliance.host.libvirt_uri) as conn:
        hypervisor.snapshot_revert(conn, str(appliance.domain_uuid), op.params["name"])
        status = _settled_status(conn, appliance)
    set_status(appliance, status, f"reverted to {op.params['name']}")
    return {"snapshot": op.params["name"]}


def _snapshot_delete(op: Operation, appliance: Appliance) -> dict:
    with hypervisor.connection(appliance.host.libvirt_uri) as conn:
        uuid = str(appliance.domain_uuid)
        if any(s["name"] == op.params["name"] for s in hypervisor.snapshot_list(conn, uuid)):
            hypervisor.snapshot_delete(conn, uuid, op.params["name"])
    Snapshot.objects.filter(appliance=appliance, name=op.params["name"]).delete()
    push(appliance)
    return {"snapshot": op.params["name"]}


def _migrate(op: Operation, appliance: Appliance) -> dict | None:
    target = Host.objects.get(pk=op.params["target_host"])
    source = appliance.host
    if op.params.get("phase") == "prepare":
        # On the target's worker: its copy of the image, an empty overlay on
        # it (block migration fills it), and the same seed.
        set_status(appliance, Status.MIGRATING, f"preparing {target.name}")
        entry = ensure_cached(target, appliance.template,
                              on_detail=lambda text: set_status(appliance, detail=f"{target.name}: {text}"))
        prepare_disk_and_seed(appliance, target, entry, fresh_disk=True)
        with transaction.atomic():
            op.params = {**op.params, "phase": "transfer"}
            op.queue_name = source.queue
            op.save(update_fields=["params", "queue_name"])
            op.settle(status=StepStatus.PENDING, retry_in=0)
        return None
    entry = CacheEntry.objects.get(host=target, template=appliance.template)
    with hypervisor.connection(target.libvirt_uri) as conn:
        dest_xml = hypervisor.domain_xml(domain_spec(appliance, target, entry, _acceleration(target, entry, conn)))

    last = [0.0]

    def progress(stats: dict) -> None:
        total, remaining = stats.get("data_total") or 0, stats.get("data_remaining") or 0
        percent = int(100 * (total - remaining) / total) if total else 0
        if time.monotonic() - last[0] >= 0.5:
            last[0] = time.monotonic()
            Operation.objects.filter(pk=op.pk).update(progress=min(percent, 99))
            set_status(appliance, detail=f"moving to {target.name}: {percent}%")

    set_status(appliance, detail=f"moving to {target.name}")
    result = hypervisor.migrate(
        source_uri=source.libvirt_uri, dest_uri=target.libvirt_uri, uuid=str(appliance.domain_uuid),
        dest_xml=dest_xml, migration_uri=f"tcp://{target.migration_address}", on_progress=progress,
        full_disk=bool(appliance.imported_from),
    )
    old = paths_on(source, appliance)
    earlier = (appliance.earlier_console_log + console_tail(appliance))[-CONSOLE_TAIL_BYTES:]
    with transaction.atomic():
        Appliance.objects.filter(pk=appliance.pk).update(host=target, earlier_console_log=earlier)
        appliance.host = target
        set_status(appliance, Status.READY, "")
        _record(appliance, "migrated", op.actor, {
            "from": source.name, "to": target.name, "duration_s": result.duration_s, "downtime_ms": result.downtime_ms,
        })
    shutil.rmtree(old.directory, ignore_errors=True)
    return {"from": source.name, "to": target.name, "duration_s": result.duration_s,
            "downtime_ms": result.downtime_ms, "data_total": result.data_total}


def _export(op: Operation, appliance: Appliance) -> dict:
    """Flatten the disk at a consistent point (at rest, or with the guest
    paused just for the copy), then stream the archive into ARCHIVE_DIR
    under a temporary name, renamed to its SHA-256 when complete."""
    include_secrets = bool(op.params.get("secrets"))
    host = appliance.host
    paths = paths_on(host, appliance)
    directory = exports.archive_directory(appliance.pk)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    flat = directory / f".op-{op.pk}.disk.qcow2"
    partial = directory / f".op-{op.pk}.tar.gz.part"
    report = _progress_reporter(op, appliance)
    try:
        report(1, "copying the disk")
        began = time.monotonic()
        consistency: dict = {}
        with hypervisor.connection(host.libvirt_uri) as conn:
            state = hypervisor.domain_state(conn, str(appliance.domain_uuid))
            copy_progress = lambda percent: report(1 + int(percent * 0.39), f"copying the disk: {int(percent)}%")
            if state in ("running", "paused"):
                with hypervisor.paused(conn, str(appliance.domain_uuid)) as pause:
                    virtual_size = hypervisor.flatten(paths.disk, flat, force_share=True, on_progress=copy_progress)
                consistency = {"method": Archive.Consistency.PAUSED, "paused_ms": pause.paused_ms,
                               "filesystems_frozen": pause.frozen}
                state_at = int(pause.started_at)
            else:
                virtual_size = hypervisor.flatten(paths.disk, flat, on_progress=copy_progress)
                consistency = {"method": Archive.Consistency.STOPPED}
                # The disk's last change: two exports of an appliance at rest
                # carry the same time, so they are the same bytes.
                state_at = int(paths.disk.stat().st_mtime)
        copied = time.monotonic()
        _check_not_deleting(appliance)
        seed = _cloud_init(appliance, with_secrets=include_secrets)
        texts = {
            archive.USER_DATA: seed.user_data,
            archive.META_DATA: seed.meta_data,
            archive.WG0_CONF: seed.wg0_conf,
            archive.MAIN_TF: terraform.render_main_tf(terraform.TerraformSpec(
                name=appliance.name, vcpus=appliance.vcpus, memory_mib=appliance.memory_mib,
                disk_bytes=virtual_size, os=appliance.template.os,
            )),
        }
        entry = CacheEntry.objects.filter(host=host, template=appliance.template).first()
        manifest = {
            "format": archive.FORMAT,
            "infrasim_version": settings.INFRASIM_VERSION,
            "created_at": archive.iso_time(state_at),
            "appliance": {
                "name": appliance.name, "template": appliance.template.slug,
                "image_digest": (entry.digest if entry and entry.digest else appliance.template.checksum) or "unknown",
                "os": appliance.template.os, "vcpus": appliance.vcpus, "memory_mib": appliance.memory_mib,
                "disk_gib": appliance.disk_gib, "disk_virtual_size": virtual_size,
            },
            "consistency": consistency,
            "secrets_included": include_secrets,
            "redacted": list(seed.redacted),
            "disk_note": "disk.qcow2 is the guest's disk as the guest left it, with whatever it stores "
                         "(its SSH host keys, and the WireGuard key in /etc/wireguard/wg0.conf).",
        }
        report(40, "writing the archive")
        with open(partial, "wb") as output:
            written = archive.write(
                output, disk=flat, texts=texts, manifest=manifest, mtime=state_at,
                on_progress=lambda done, total: report(40 + int(59 * done / max(total, 1)),
                                                       f"writing the archive: {100 * done // max(total, 1)}%"),
            )
            output.flush()
            os.fsync(output.fileno())
        final = directory / f"{written.sha256}.tar.gz"
        os.replace(partial, final)
        with transaction.atomic():
            made, _ = Archive.objects.update_or_create(operation=op, defaults={
                "appliance": appliance, "path": str(final), "size": written.size, "sha256": written.sha256,
                "secrets_included": include_secrets, "consistency": consistency["method"],
                "manifest": written.manifest,
            })
            pruned = exports.prune_archives(appliance.owner_id, keep=made)
            _record(appliance, "exported", op.actor, {
                "archive": written.sha256, "size": written.size, "secrets": include_secrets,
                "consistency": consistency, "pruned": pruned,
            })
    finally:
        flat.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
    push(appliance)
    return {"archive": made.pk, "sha256": written.sha256, "size": written.size, "consistency": consistency,
            "secrets_included": include_secrets, "copy_s": round(copied - began, 2),
            "write_s": round(time.monotonic() - copied, 2)}


def _progress_reporter(op: Operation, appliance: Appliance, every_s: float = 0.5):
    """Progress to the job's row and the owner's open pages, at most every
    `every_s` seconds (the console shows it live)."""
    last = [0.0]

    def report(percent: int, detail: str) -> None:
        if time.monotonic() - last[0] < every_s:
            return
        last[0] = time.monotonic()
        Operation.objects.filter(pk=op.pk).update(progress=max(0, min(percent, 99)))
        publish_to_user(appliance.owner_id, kind="appliance.operation", data={
            "id": appliance.pk, "operation": op.pk, "kind": op.kind, "progress": min(percent, 99), "detail": detail,
        })

    return report


def _delete(op: Operation, appliance: Appliance) -> None:
    with hypervisor.connection(appliance.host.libvirt_uri) as conn:
        hypervisor.undefine(conn, str(appliance.domain_uuid))
    shutil.rmtree(paths_on(appliance.host, appliance).directory, ignore_errors=True)
    exports.remove_archives(appliance)
    for params in appliance.operations.filter(kind=Kind.CREATE).values_list("params", flat=True):
        if params.get("import_dir"):  # a create that never took its disk
            shutil.rmtree(params["import_dir"], ignore_errors=True)
    with transaction.atomic():
        if appliance.peer_id:
            mesh_services.peer_revoke(actor=appliance.owner, peer_id=appliance.peer_id)
        _record(appliance, "deleted", op.actor, {"name": appliance.name, "host": appliance.host.name})
        owner_id, pk = appliance.owner_id, appliance.pk
        appliance.delete()
        publish_to_user(owner_id, kind="appliance.deleted", data={"id": pk})


HANDLERS = {
    Kind.CREATE: _create,
    Kind.START: _start,
    Kind.SHUTDOWN: _shutdown,
    Kind.REBOOT: _reboot,
    Kind.POWEROFF: _poweroff,
    Kind.SNAPSHOT_CREATE: _snapshot_create,
    Kind.SNAPSHOT_REVERT: _snapshot_revert,
    Kind.SNAPSHOT_DELETE: _snapshot_delete,
    Kind.MIGRATE: _migrate,
    Kind.EXPORT: _export,
    Kind.DELETE: _delete,
}


def register_handler(kind: str, handler) -> None:
    """Another app's job that must hold the appliance like ours do (one job at
    a time, on its host's queue, cancelled by a delete): forensics' memory
    capture registers here, since appliances may not import forensics."""
    if kind in HANDLERS and HANDLERS[kind] is not handler:
        raise RuntimeError(f"a handler for {kind} is already registered")
    HANDLERS[kind] = handler


def run_operation(operation_id: int) -> None:
    if Operation.claim(operation_id) is Claim.NOT_OURS:
        return
    op = Operation.objects.select_related(
        "appliance__host", "appliance__template", "appliance__owner", "appliance__peer__network", "actor"
    ).get(pk=operation_id)
    appliance = op.appliance
    try:
        if appliance.status == Status.DELETING and op.kind != Kind.DELETE:
            raise Cancelled()
        result = HANDLERS[op.kind](op, appliance)
    except Cancelled:
        op.settle(status=StepStatus.FAILED, error="cancelled: the appliance is being deleted")
    except Permanent as exc:
        _give_up(op, appliance, str(exc))
    except TRANSIENT as exc:
        message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, hypervisor.HypervisorError) else str(exc)
        log.warning("appliance %s: %s failed: %s", appliance.pk, op.kind, message)
        with transaction.atomic():
            if op.fail_or_retry(message) is None:
                _mark_failed(op, appliance, message)
    else:
        if op.kind == Kind.DELETE:
            return  # the row went with the appliance
        if result is not None:
            op.settle(status=StepStatus.SUCCEEDED, result=result, progress=100)
    if op.kind != Kind.DELETE:
        queue_delete_if_requested(appliance)


def _give_up(op: Operation, appliance: Appliance, message: str) -> None:
    with transaction.atomic():
        op.settle(status=StepStatus.FAILED, error=message)
        _mark_failed(op, appliance, message)


def _mark_failed(op: Operation, appliance: Appliance, message: str) -> None:
    """A create or start that gave up leaves a failed appliance; other jobs
    leave the appliance as it is, with the error shown on it."""
    fields = {"last_error": message[:2000]}
    try:
        if op.kind in (Kind.CREATE, Kind.START, Kind.MIGRATE):
            set_status(appliance, Status.FAILED, f"{op.get_kind_display()} failed", **fields)
        else:
            set_status(appliance, detail=f"{op.get_kind_display()} failed", **fields)
    except Cancelled:
        pass


# --- Booting, console log, reconciling ------------------------------------------------------


def console_tail(appliance: Appliance, limit: int = CONSOLE_TAIL_BYTES) -> str:
    """The serial console's last `limit` bytes on this host (what earlier
    hosts printed is in earlier_console_log)."""
    path = paths_on(appliance.host, appliance).serial_log
    try:
        with open(path, "rb") as log_file:
            log_file.seek(0, 2)
            size = log_file.tell()
            log_file.seek(max(0, size - limit))
            return log_file.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def console_log(appliance: Appliance, limit: int = CONSOLE_TAIL_BYTES) -> str:
    return (appliance.earlier_console_log + console_tail(appliance, limit))[-limit:]


def watch_boot(appliance_id: int) -> None:
    """First boot: ready when cloud-init phones home, failed at the deadline.
    Later boots: ready when the guest agent answers."""
    appliance = Appliance.objects.select_related("host").filter(pk=appliance_id).first()
    if appliance is None or appliance.status != Status.BOOTING or appliance.boot_deadline is None:
        return
    now = timezone.now()
    if appliance.phoned_home_at is not None:
        with hypervisor.connection(appliance.host.libvirt_uri) as conn:
            boot_id = hypervisor.guest_booted(conn, str(appliance.domain_uuid))
        if boot_id and boot_id != appliance.previous_boot_id:
            try:
                set_status(appliance, Status.READY, "", ready_at=now, boot_deadline=None)
            except Cancelled:
                pass
            return
    if now >= appliance.boot_deadline:
        seconds = settings.APPLIANCE_BOOT_TIMEOUT_SECONDS
        what = "cloud-init did not phone home" if appliance.phoned_home_at is None else "the guest agent did not answer"
        try:
            set_status(appliance, Status.FAILED, "timed out while booting",
                       last_error=f"{what} within {seconds} s of the boot; its serial console log is attached.",
                       failure_console_log=console_tail(appliance), boot_deadline=None)
        except Cancelled:
            pass
        return
    wait = (appliance.boot_deadline - now).total_seconds() if appliance.phoned_home_at is None else 3
    enqueue_on_commit("appliances.tasks.watch_boot", (appliance.pk,), queue=appliance.host.queue,
                      countdown=max(1.0, wait))


def probe_host(host_id: int) -> None:
    host = Host.objects.filter(pk=host_id).first()
    if host is None:
        return
    try:
        with hypervisor.connection(host.libvirt_uri) as conn:
            facts = hypervisor.host_facts(conn)
            entry = CacheEntry.objects.filter(host=host, status=StepStatus.SUCCEEDED).exclude(kernel_path="").first()
            accel, detail = hypervisor.detect_acceleration(
                conn, kernel=Path(entry.kernel_path) if entry else None,
                initrd=Path(entry.initrd_path) if entry else None,
            )
    except TRANSIENT as exc:
        Host.objects.filter(pk=host.pk).update(last_error=str(exc)[:2000])
        return
    Host.objects.filter(pk=host.pk).update(facts=facts, acceleration=accel, acceleration_detail=detail[:2000],
                                           last_seen_at=timezone.now(), last_error="")


# States the reconciler may correct: no job is running on them.
SETTLED = (Status.READY, Status.STOPPED, Status.BOOTING, Status.FAILED)


def reconcile_host(host_id: int) -> dict:
    """Compare libvirt with the database on one host: appliances whose VM
    vanished fail, stale running/stopped states are corrected, and domains
    that look like ours but belong to no appliance are flagged."""
    host = Host.objects.filter(pk=host_id).first()
    if host is None:
        return {}
    try:
        with hypervisor.connection(host.libvirt_uri) as conn:
            domains = {d["uuid"]: d for d in hypervisor.list_domains(conn)}
            facts = hypervisor.host_facts(conn)
    except TRANSIENT as exc:
        Host.objects.filter(pk=host.pk).update(last_error=f"unreachable: {exc}"[:2000])
        return {"error": str(exc)}
    report = {"vanished": [], "corrected": [], "unknown": []}
    known = set()
    for appliance in Appliance.objects.filter(host=host).select_related("host"):
        known.add(str(appliance.domain_uuid))
        if appliance.status not in SETTLED or appliance.operations.filter(
            status__in=[StepStatus.PENDING, StepStatus.RUNNING, StepStatus.RETRYING]
        ).exists():
            continue
        domain = domains.get(str(appliance.domain_uuid))
        try:
            if domain is None and appliance.status != Status.FAILED:
                set_status(appliance, Status.FAILED, "its VM vanished from the host",
                           last_error="The reconciler found no domain for this appliance on its host.")
                report["vanished"].append(appliance.pk)
            elif domain is not None and domain["state"] in ("shutoff", "crashed") and appliance.status in (
                Status.READY, Status.BOOTING
            ):
                set_status(appliance, Status.STOPPED, "the guest stopped on its own", boot_deadline=None)
                report["corrected"].append(appliance.pk)
            elif domain is not None and domain["state"] == "running" and appliance.status == Status.STOPPED:
                set_status(appliance, Status.READY, "running again (found by the reconciler)")
                report["corrected"].append(appliance.pk)
        except Cancelled:
            continue
    for uuid, domain in domains.items():
        if uuid not in known and domain["name"].startswith("infrasim-"):
            report["unknown"].append(domain["name"])
    Host.objects.filter(pk=host.pk).update(
        facts=facts, last_seen_at=timezone.now(), last_error=(
            f"domains that belong to no appliance: {', '.join(report['unknown'])}" if report["unknown"] else ""
        )[:2000],
    )
    if any(report.values()):
        ledger.record(kind="appliances.host.reconciled", actor="system", subject=f"host:{host.pk}", payload=report)
    return report
