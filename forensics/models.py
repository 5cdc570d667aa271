from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from infrasim_site.steps import StepStatus
from infrasim_site.visibility import OwnedQuerySet

# --- The transparency log (forensics.ledger) -----------------------------------------
# Entries, nodes and checkpoints are append-only: the database refuses UPDATE,
# DELETE and TRUNCATE on them (triggers, forensics.append_only). Only the
# one-row head moves.


class LedgerEntry(models.Model):
    """One security event, leaf `index` of the RFC 6962 Merkle tree.

    `leaf` keeps the exact bytes that were hashed, so anyone can recompute
    `leaf_hash` and check that the columns say what was hashed."""

    LEAF_REBASED = 0
    LEAF_RECORDED = 1
    LEAF_VERSIONS = [
        (LEAF_REBASED, "re-based by migration: rebuilt from the row, the first hash is lost"),
        (LEAF_RECORDED, "the bytes hashed when the event was recorded"),
    ]

    index = models.BigIntegerField(unique=True, editable=False, help_text="Position in the log, from 0, never reused.")
    recorded_at = models.DateTimeField(db_index=True)
    kind = models.CharField(max_length=80, db_index=True)
    actor = models.CharField(max_length=120, help_text="Who did it: user:<id>, operator:<id> or system.")
    subject = models.CharField(max_length=200, db_index=True, help_text="What it was done to, as type:id.")
    payload = models.JSONField(default=dict)
    # A plain id, not a foreign key: entries outlive the users they name.
    concerns = models.BigIntegerField(
        null=True, blank=True, db_index=True, help_text="Id of the user this entry concerns (not hashed)."
    )
    leaf = models.BinaryField(help_text="The canonical JSON that was hashed.")
    leaf_version = models.PositiveSmallIntegerField(choices=LEAF_VERSIONS, default=LEAF_RECORDED)
    leaf_hash = models.CharField(max_length=64, editable=False)

    class Meta:
        ordering = ["index"]
        verbose_name_plural = "ledger entries"

    def __str__(self) -> str:
        return f"#{self.index} {self.kind} {self.subject} by {self.actor}"


class LedgerNode(models.Model):
    """The root of a complete subtree: leaves [index * 2**level, (index + 1) * 2**level).
    Written once, when its last leaf arrives (level >= 1; the leaves are the
    entries' own hashes), so proofs read O(log n) of these instead of every leaf."""

    level = models.PositiveSmallIntegerField()
    index = models.BigIntegerField()
    hash = models.BinaryField(max_length=32)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["level", "index"], name="ledger_node_position")]

    def __str__(self) -> str:
        return f"node {self.level}/{self.index}"


class LedgerHead(models.Model):
    """The log's one head row: its size, root and compact range (the roots of
    the complete subtrees that make up [0, size), largest first, 32 bytes
    each). record() locks it, which serializes appenders and hands out indexes."""

    ONLY = 1

    id = models.PositiveSmallIntegerField(primary_key=True, default=ONLY, editable=False)
    size = models.BigIntegerField(default=0)
    root = models.BinaryField(max_length=32)
    frontier = models.BinaryField(default=b"")

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(id=1), name="ledger_head_single_row")]

    def __str__(self) -> str:
        return f"ledger head at size {self.size}"


class LedgerCheckpoint(models.Model):
    """A signed note (C2SP tlog-checkpoint) for one tree size, kept so every
    checkpoint handed out can be checked against the log later."""

    size = models.BigIntegerField(unique=True)
    root = models.BinaryField(max_length=32)
    note = models.TextField()
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["size"]

    def __str__(self) -> str:
        return f"checkpoint at size {self.size}"


# --- Memory acquisitions and the keys that sign them ----------------------------------------


class SigningKey(models.Model):
    """A person's Ed25519 attestation key, made by InfraSim and sealed at rest.
    Rotating retires the current key; retired public keys stay published so
    old attestations still verify. key_id is the hex SHA-256 of the raw key."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL,
                             related_name="signing_keys")
    # Kept when the account goes: a published key must keep its name.
    handle = models.CharField(max_length=63, blank=True)
    key_id = models.CharField(max_length=64, unique=True)
    public_key = models.BinaryField()
    sealed_private_key = models.TextField(help_text="The seed, sealed with the master key.")
    created_at = models.DateTimeField(auto_now_add=True)
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.UniqueConstraint(fields=["user"], condition=Q(retired_at__isnull=True),
                                    name="signing_key_one_current_per_user"),
        ]

    def __str__(self) -> str:
        return f"{self.handle or self.user_id} {self.key_id[:16]}"


class AcquisitionQuerySet(OwnedQuerySet):
    owner_field = "requested_by"


class Acquisition(models.Model):
    """One capture of an appliance's memory: the chain of custody. The job is
    the appliance's `memory_dump` Operation (one job at a time per appliance,
    on its host's queue); this row outlives it and the appliance, since
    evidence must."""

    class Phase(models.TextChoices):
        PENDING = "pending", "pending"
        DUMPING = "dumping", "dumping"
        SIGNING = "signing", "signing"
        COMPLETE = "complete", "complete"

    class Format(models.TextChoices):
        ELF = "elf", "ELF core"
        KDUMP_ZLIB = "kdump-zlib", "kdump, zlib (flattened)"
        KDUMP_LZO = "kdump-lzo", "kdump, LZO (flattened)"
        KDUMP_SNAPPY = "kdump-snappy", "kdump, Snappy (flattened)"

    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL,
                                     related_name="acquisitions")
    appliance = models.ForeignKey("appliances.Appliance", null=True, on_delete=models.SET_NULL,
                                  related_name="acquisitions")
    operation = models.OneToOneField("appliances.Operation", null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="acquisition")
    case_ref = models.CharField(max_length=100)
    reason = models.TextField(max_length=2000)
    format = models.CharField(max_length=20, choices=Format.choices, default=Format.ELF)
    phase = models.CharField(max_length=10, choices=Phase.choices, default=Phase.PENDING)
    # Set when it fails for good (the job's own error, kept after the job row goes).
    failed_error = models.TextField(blank=True)
    custody = models.JSONField(default=dict, blank=True, help_text="The predicate of the signed statement.")
    size = models.BigIntegerField(null=True, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    evidence_path = models.CharField(max_length=500, blank=True)
    s3_location = models.CharField(max_length=500, blank=True)
    signing_key = models.ForeignKey(SigningKey, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    envelope = models.JSONField(null=True, blank=True, help_text="The DSSE envelope, exactly as signed.")
    log_index = models.BigIntegerField(null=True, blank=True)
    cosignature = models.JSONField(null=True, blank=True, help_text="The requester's passkey assertion over the PAE.")
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    objects = AcquisitionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"acquisition {self.pk} ({self.case_ref})"

    @property
    def status(self) -> str:
        """pending, dumping, signing, complete, or failed (the job gave up)."""
        if self.phase != self.Phase.COMPLETE and (
                self.failed_error or self.operation is None or self.operation.status == StepStatus.FAILED):
            return "failed"
        return self.phase

    @property
    def last_error(self) -> str:
        if self.failed_error:
            return self.failed_error
        if self.operation is None:
            return "" if self.phase == self.Phase.COMPLETE else "the job is gone: its appliance was deleted"
        return self.operation.last_error

    @property
    def progress(self) -> int:
        if self.phase == self.Phase.COMPLETE:
            return 100
        return self.operation.progress if self.operation is not None else 0

    @property
    def evidence_name(self) -> str:
        extension = "elf" if self.format == self.Format.ELF else "kdump"
        return f"memory-{self.pk}.{extension}"
