"""Hypervisor hosts, the template catalog and its per-host image cache,
appliances (VMs), their operations (one step row per job, the task log) and
snapshots."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from infrasim_site.steps import Step, StepStatus
from infrasim_site.visibility import OwnedQuerySet


class Host(models.Model):
    """A hypervisor: a libvirt URI and the Celery queue of the worker that runs
    on it. Every libvirt call for a VM runs on its host's queue."""

    class Acceleration(models.TextChoices):
        UNKNOWN = "", "not probed yet"
        KVM = "kvm", "KVM"
        TCG = "tcg", "TCG (software emulation)"

    name = models.SlugField(max_length=40, unique=True)
    libvirt_uri = models.CharField(max_length=300, default="qemu:///session",
                                   help_text="qemu:///session, qemu:///system or qemu+ssh://host/system")
    queue = models.CharField(max_length=60, unique=True, help_text="the Celery queue its worker consumes")
    vcpus = models.PositiveIntegerField(help_text="vCPUs that appliances may take in all")
    memory_mib = models.PositiveIntegerField(help_text="guest memory in MiB that appliances may take in all")
    disk_gib = models.PositiveIntegerField(help_text="guest disk in GiB that appliances may take in all")
    storage_dir = models.CharField(max_length=300, help_text="overlays, seed ISOs and serial logs on the host")
    image_cache_dir = models.CharField(max_length=300, help_text="the content-addressed image cache on the host")
    guest_gateway_address = models.GenericIPAddressField(
        default="10.0.2.2", help_text="the host as its guests reach it (10.0.2.2 with user-mode networking)"
    )
    mesh_endpoint = models.CharField(
        max_length=260, blank=True,
        help_text="host:port at which guests on this host reach the mesh gateway; "
                  "blank: the guest gateway address and the network's listen port",
    )
    migration_address = models.CharField(
        max_length=100, default="127.0.0.1",
        help_text="the address other hosts send live migration traffic to (tcp://<address>)",
    )
    enabled = models.BooleanField(default=True, help_text="placement puts new appliances here")
    acceleration = models.CharField(max_length=3, choices=Acceleration.choices, blank=True, default="")
    acceleration_detail = models.TextField(blank=True)
    facts = models.JSONField(default=dict, blank=True, help_text="versions and sizes libvirt reports")
    last_seen_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Template(models.Model):
    """A catalog entry: an official cloud image (URL and checksum) or an image
    built here from a recipe."""

    class Checksum(models.TextChoices):
        SHA256 = "sha256", "SHA-256"
        SHA512 = "sha512", "SHA-512"

    slug = models.SlugField(max_length=60, unique=True)
    name = models.CharField(max_length=100)
    os = models.CharField(max_length=60, help_text="e.g. Debian 12")
    source_url = models.URLField(max_length=500, blank=True)
    checksum_algorithm = models.CharField(max_length=6, choices=Checksum.choices, default=Checksum.SHA256)
    checksum = models.CharField(max_length=128, blank=True, help_text="hex digest of the image file")
    checksum_url = models.URLField(
        max_length=500, blank=True,
        help_text="the publisher's checksum list (SHA256SUMS, SHA512SUMS) when no digest is pinned",
    )
    recipe = models.CharField(max_length=60, blank=True, help_text="built here instead of downloaded")
    default_disk_gib = models.PositiveIntegerField(default=4)
    min_disk_gib = models.PositiveIntegerField(default=2, help_text="the image's own virtual size, rounded up")
    min_memory_mib = models.PositiveIntegerField(default=512)
    default_user = models.CharField(max_length=32, default="debian", help_text="the image's cloud-init user")
    enabled = models.BooleanField(default=True)
    sort_order = models.PositiveIntegerField(default=100)

    class Meta:
        ordering = ["sort_order", "slug"]

    def __str__(self) -> str:
        return self.slug


class CacheEntry(Step):
    """A template's image in one host's cache: made once per host (a step
    row, so that concurrent first uses download or build it once)."""

    task_name = "appliances.tasks.cache_image"

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="cache_entries")
    template = models.ForeignKey(Template, on_delete=models.CASCADE, related_name="cache_entries")
    digest = models.CharField(max_length=140, blank=True)
    disk_path = models.CharField(max_length=500, blank=True)
    disk_format = models.CharField(max_length=10, blank=True)
    kernel_path = models.CharField(max_length=500, blank=True)
    initrd_path = models.CharField(max_length=500, blank=True)
    size = models.PositiveBigIntegerField(default=0)
    virtual_size = models.PositiveBigIntegerField(default=0)
    detail = models.CharField(max_length=200, blank=True, help_text="what is happening now")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "cache entries"
        constraints = [models.UniqueConstraint(fields=["host", "template"], name="cache_entry_unique_per_host")]

    def __str__(self) -> str:
        return f"{self.template} on {self.host}"

    def max_attempts(self) -> int:
        return settings.APPLIANCE_MAX_ATTEMPTS

    def backoff_seconds(self) -> float:
        return settings.APPLIANCE_BACKOFF_SECONDS

    def queue(self) -> str:
        return self.host.queue

    @property
    def ready(self) -> bool:
        return self.status == StepStatus.SUCCEEDED


class ApplianceQuerySet(OwnedQuerySet):
    pass


class Appliance(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        PREPARING_IMAGE = "preparing_image", "preparing image"
        PROVISIONING = "provisioning", "provisioning"
        BOOTING = "booting", "booting"
        READY = "ready", "ready"
        STOPPED = "stopped", "stopped"
        MIGRATING = "migrating", "migrating"
        FAILED = "failed", "failed"
        DELETING = "deleting", "deleting"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="appliances")
    name = models.CharField(max_length=63)
    template = models.ForeignKey(Template, on_delete=models.PROTECT, related_name="appliances")
    host = models.ForeignKey(Host, on_delete=models.PROTECT, related_name="appliances")
    vcpus = models.PositiveIntegerField()
    memory_mib = models.PositiveIntegerField()
    disk_gib = models.PositiveIntegerField()
    ssh_authorized_keys = models.JSONField(default=list, blank=True)
    user_data = models.TextField(blank=True, help_text="the owner's own cloud-config, merged into ours")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    status_detail = models.CharField(max_length=200, blank=True)
    last_error = models.TextField(blank=True)
    failure_console_log = models.TextField(blank=True, help_text="the serial console's last lines when it failed")
    # The serial log is a file on the VM's host; a migration carries what the
    # console printed on earlier hosts here, so the log reads on.
    earlier_console_log = models.TextField(blank=True)
    # The VM on its host: found again by this UUID, so that no step makes two.
    domain_uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    peer = models.OneToOneField("mesh.Peer", null=True, blank=True, on_delete=models.SET_NULL, related_name="appliance")
    wg_private_key_sealed = models.TextField(blank=True)
    # cloud-init's phone home (a one-time URL, whose token is derived from
    # the secret key and the domain UUID) marks the first boot done.
    phoned_home_at = models.DateTimeField(null=True, blank=True)
    boot_deadline = models.DateTimeField(null=True, blank=True)
    # The guest's boot id before a start or reboot: the new boot is ready
    # when the guest agent answers with another one.
    previous_boot_id = models.CharField(max_length=40, blank=True)
    # Made from an archive: the disk is the archive's standalone qcow2, not
    # a linked clone of the template's image (its SHA-256 is kept here).
    imported_from = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    ready_at = models.DateTimeField(null=True, blank=True)

    objects = ApplianceQuerySet.as_manager()

    class Meta:
        ordering = ["created_at", "pk"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="appliance_unique_name_per_owner")]

    def __str__(self) -> str:
        return self.name

    @property
    def domain_name(self) -> str:
        return f"infrasim-{self.pk}"

    @property
    def instance_id(self) -> str:
        return f"iid-{self.domain_uuid}"


class Operation(Step):
    """One job on an appliance (create, start, migrate...), run by a worker on
    the appliance's host: its row is the job's log line (Proxmox's task log)."""

    class Kind(models.TextChoices):
        CREATE = "create", "create"
        START = "start", "start"
        SHUTDOWN = "shutdown", "shut down"
        REBOOT = "reboot", "reboot"
        POWEROFF = "poweroff", "power off"
        MIGRATE = "migrate", "migrate"
        SNAPSHOT_CREATE = "snapshot_create", "create snapshot"
        SNAPSHOT_REVERT = "snapshot_revert", "revert to snapshot"
        SNAPSHOT_DELETE = "snapshot_delete", "delete snapshot"
        EXPORT = "export", "export"
        MEMORY_DUMP = "memory_dump", "capture memory"
        DELETE = "delete", "delete"

    task_name = "appliances.tasks.run_operation"

    appliance = models.ForeignKey(Appliance, on_delete=models.CASCADE, related_name="operations")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+")
    params = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)
    progress = models.PositiveSmallIntegerField(default=0, help_text="percent")
    # The queue this job runs on: the appliance's host when it was queued (a
    # migration runs on the source host even after the row points elsewhere).
    queue_name = models.CharField(max_length=60)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            # One job at a time per appliance: the database refuses a second.
            models.UniqueConstraint(
                fields=["appliance"], condition=Q(status__in=["pending", "running", "retrying"]),
                name="operation_one_unfinished_per_appliance",
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} of {self.appliance_id}"

    def max_attempts(self) -> int:
        return settings.APPLIANCE_MAX_ATTEMPTS

    def backoff_seconds(self) -> float:
        return settings.APPLIANCE_BACKOFF_SECONDS

    def queue(self) -> str:
        return self.queue_name


class SnapshotQuerySet(OwnedQuerySet):
    owner_field = "appliance__owner"


class Snapshot(models.Model):
    appliance = models.ForeignKey(Appliance, on_delete=models.CASCADE, related_name="snapshots")
    name = models.CharField(max_length=63)
    description = models.CharField(max_length=200, blank=True)
    with_memory = models.BooleanField(default=False)
    state = models.CharField(max_length=20, blank=True, help_text="the domain's state when it was taken")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = SnapshotQuerySet.as_manager()

    class Meta:
        ordering = ["created_at", "pk"]
        constraints = [models.UniqueConstraint(fields=["appliance", "name"], name="snapshot_unique_name")]

    def __str__(self) -> str:
        return f"{self.appliance}@{self.name}"


class ArchiveQuerySet(OwnedQuerySet):
    owner_field = "appliance__owner"


class Archive(models.Model):
    """A finished export: one `infrasim-appliance/1` file in ARCHIVE_DIR,
    named by its SHA-256 (the download's ETag)."""

    class Consistency(models.TextChoices):
        STOPPED = "stopped", "stopped (the disk was at rest)"
        PAUSED = "paused", "paused while the disk was copied"

    appliance = models.ForeignKey(Appliance, on_delete=models.CASCADE, related_name="archives")
    operation = models.OneToOneField(Operation, null=True, blank=True, on_delete=models.SET_NULL, related_name="archive")
    path = models.CharField(max_length=500)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    secrets_included = models.BooleanField(default=False)
    consistency = models.CharField(max_length=10, choices=Consistency.choices)
    manifest = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ArchiveQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.appliance} archive {self.sha256[:12]}"

    @property
    def filename(self) -> str:
        return f"appliance-{self.appliance_id}.tar.gz"
