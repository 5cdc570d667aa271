"""Archives of appliances: the rules for exporting one, downloading it and
importing one (the request side; the worker builds archives in
appliances.jobs, and appliances.archive owns the file format).

Secrets (the guest's WireGuard private key and pre-shared key, the phone-home
URL, and the credentials in the owner's cloud-config) go into an archive
only when its owner asks for them, from a token or from a session whose
passkey was checked within ARCHIVE_SECRETS_RECHECK_SECONDS. Views pass how
the caller proved who they are as a `Proof`; the rule is here.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.urls import Resolver404, resolve

from appliances import archive, hypervisor
from appliances.models import Appliance, Archive, Operation
from appliances.services import ALLOWED_FROM, ImportedDisk, _own, _queue, _record, appliance_create, push
from identity.models import ApiToken, User
from identity.sessions import Proof
from infrasim_site.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from infrasim_site.steps import UNFINISHED


Status = Appliance.Status
Kind = Operation.Kind


class RecheckRequired(PermissionDenied):
    default_code = "passkey_recheck_required"


def _check_secrets_allowed(actor: User, appliance: Appliance, proof: Proof) -> None:
    if appliance.owner_id != actor.pk:
        raise PermissionDenied("Only the appliance's owner may export its secrets.", field="secrets")
    if proof.token_scope is not None:
        if proof.token_scope != ApiToken.Scope.WRITE:
            raise PermissionDenied("A read-only token cannot export secrets: use a read-write token.",
                                   field="secrets")
        return
    window = settings.ARCHIVE_SECRETS_RECHECK_SECONDS
    if proof.passkey_checked_at is None or time.time() - proof.passkey_checked_at > window:
        raise RecheckRequired(
            f"Confirm with your passkey first: including secrets needs a passkey check within the last "
            f"{window // 60} minutes.", field="secrets",
        )


@transaction.atomic
def archive_export(*, actor: User, appliance_id: int, include_secrets: bool = False,
                   proof: Proof = Proof()) -> Operation:
    """Queue a fresh export on the appliance's host."""
    appliance = _own(actor, appliance_id, lock=True)
    if include_secrets:
        _check_secrets_allowed(actor, appliance, proof)
    allowed, why = ALLOWED_FROM[Kind.EXPORT]
    if appliance.status not in allowed:
        raise Conflict(f"Cannot export '{appliance.name}' while it is {appliance.get_status_display()}. {why}",
                       field="status", code="invalid_state")
    operation = _queue(appliance, Kind.EXPORT, actor, {"secrets": include_secrets})
    _record(appliance, "export_requested", actor, {"secrets": include_secrets})
    push(appliance)
    return operation


def archive_for_download(*, actor: User, appliance_id: int, include_secrets: bool = False,
                         proof: Proof = Proof()) -> Archive | Operation:
    """The newest finished archive of the kind asked for (with or without
    secrets), or the export that is making one: the one running now, or one
    started here when there is none."""
    appliance = _own(actor, appliance_id)
    if include_secrets:
        _check_secrets_allowed(actor, appliance, proof)
    building = appliance.operations.filter(kind=Kind.EXPORT, status__in=UNFINISHED).first()
    if building is not None and bool(building.params.get("secrets")) == include_secrets:
        return building
    latest = appliance.archives.filter(secrets_included=include_secrets).first()
    if latest is not None and Path(latest.path).is_file():
        if include_secrets:
            _record(appliance, "archive_downloaded", actor, {"archive": latest.sha256, "secrets": True})
        return latest
    return archive_export(actor=actor, appliance_id=appliance_id, include_secrets=include_secrets, proof=proof)


def archive_directory(appliance_id: int) -> Path:
    return Path(settings.ARCHIVE_DIR) / f"appliance-{appliance_id}"


def remove_archives(appliance: Appliance) -> None:
    """An appliance's archives go with it (the rows cascade; the files are here)."""
    shutil.rmtree(archive_directory(appliance.pk), ignore_errors=True)


def prune_archives(owner_id: int, *, keep: Archive) -> list[str]:
    """Retention: each appliance keeps its newest ARCHIVE_KEEP_PER_APPLIANCE
    archives (with and without secrets counted apart), then the owner's
    oldest go until the rest fit ARCHIVE_QUOTA_BYTES_PER_USER. `keep`, just
    made, always stays. Returns the SHA-256s removed."""
    archives = list(Archive.objects.filter(appliance__owner_id=owner_id).order_by("-created_at", "-pk"))
    doomed: list[Archive] = []
    per_kind: dict[tuple[int, bool], int] = {}
    for item in archives:
        key = (item.appliance_id, item.secrets_included)
        per_kind[key] = per_kind.get(key, 0) + 1
        if item.pk != keep.pk and per_kind[key] > settings.ARCHIVE_KEEP_PER_APPLIANCE:
            doomed.append(item)
    total = sum(item.size for item in archives if item not in doomed)
    for item in reversed(archives):  # oldest first
        if total <= settings.ARCHIVE_QUOTA_BYTES_PER_USER:
            break
        if item.pk != keep.pk and item not in doomed:
            doomed.append(item)
            total -= item.size
    for item in doomed:
        item.delete()
        # The same bytes exported twice share one file (it is named by its hash).
        if not Archive.objects.filter(path=item.path).exists():
            Path(item.path).unlink(missing_ok=True)
    return [item.sha256 for item in doomed]


# --- Import -------------------------------------------------------------------------------------


def import_limits() -> archive.Limits:
    return archive.Limits(disk_bytes=settings.ARCHIVE_IMPORT_MAX_DISK_BYTES,
                          total_bytes=settings.ARCHIVE_IMPORT_MAX_TOTAL_BYTES)


def archive_from_url(*, actor: User, url) -> Archive:
    """An archive this server exported, named by its download URL, that the
    actor may see."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidInput("The URL of an archive this server exported.", field="url", code="required")
    parts = urlsplit(url.strip())
    try:
        match = resolve(parts.path)
    except Resolver404:
        match = None
    if match is None or match.url_name != "appliance-archive":
        raise InvalidInput("Not the URL of an appliance archive on this server "
                           "(…/api/meshnet/appliances/<id>/archive).", field="url", code="not_an_archive_url")
    include_secrets = "secrets=include" in parts.query
    found = (Archive.objects.visible_to(actor).filter(appliance_id=match.kwargs.get("pk"),
                                                      secrets_included=include_secrets).first())
    if found is None or not Path(found.path).is_file():
        raise NotFound("That appliance has no finished archive you can see.", field="url")
    return found


def archive_import(
    *,
    actor: User,
    source: BinaryIO,
    name=None,
    ssh_authorized_keys=None,
    user_data=None,
) -> Appliance:
    """A new appliance from an archive: every member is checked as it streams
    into a private directory, then the appliance is made as any other, with
    a new instance ID, a new mesh peer and the importer's SSH keys, and its
    disk is the archive's. Nothing outlives a refusal."""
    staging = Path(settings.ARCHIVE_DIR) / "imports" / uuid.uuid4().hex
    staging.mkdir(mode=0o700, parents=True)
    try:
        try:
            verified = archive.verify(source, limits=import_limits(), extract_to=staging)
        except archive.ArchiveInvalid as exc:
            raise InvalidInput(str(exc), field="archive", code="invalid_archive") from None
        meta = verified.manifest["appliance"]
        disk = staging / archive.DISK
        # qemu-img reads the header too: the archive module's own check must
        # not be the only thing between a hostile header and QEMU.
        info = hypervisor.image_info(disk, "qcow2")
        if info.get("backing-filename") or info.get("format-specific", {}).get("data", {}).get("data-file"):
            raise InvalidInput("disk.qcow2 depends on another file; an archived disk must stand alone.",
                               field="archive", code="invalid_archive")
        disk_gib = max(meta["disk_gib"], -(-int(info["virtual-size"]) // 2**30))
        appliance = appliance_create(
            actor=actor, name=name if name not in (None, "") else meta["name"], template=meta["template"],
            vcpus=meta["vcpus"], memory_mib=meta["memory_mib"], disk_gib=disk_gib,
            ssh_authorized_keys=ssh_authorized_keys, user_data=user_data,
            imported=ImportedDisk(directory=staging, sha256=verified.sha256),
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return appliance
