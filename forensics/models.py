from django.db import models


class LedgerEntry(models.Model):
    """One security event. The database refuses UPDATE and DELETE on this table
    (triggers in the migrations), and each leaf hash feeds the RFC 6962 Merkle
    tree whose root proves that nothing was rewritten.

    `leaf` keeps the exact bytes that were hashed, so anyone can recompute
    `leaf_hash` and check that the columns say what was hashed."""

    LEAF_REBASED = 0
    LEAF_RECORDED = 1
    LEAF_VERSIONS = [
        (LEAF_REBASED, "re-based by migration: rebuilt from the row, the first hash is lost"),
        (LEAF_RECORDED, "the bytes hashed when the event was recorded"),
    ]

    recorded_at = models.DateTimeField(db_index=True)
    kind = models.CharField(max_length=80, db_index=True)
    actor = models.CharField(max_length=120, help_text="Who did it: user:<id>, operator:<id> or system.")
    subject = models.CharField(max_length=200, db_index=True, help_text="What it was done to, as type:id.")
    payload = models.JSONField(default=dict)
    leaf = models.BinaryField(help_text="The canonical JSON that was hashed.")
    leaf_version = models.PositiveSmallIntegerField(choices=LEAF_VERSIONS, default=LEAF_RECORDED)
    leaf_hash = models.CharField(max_length=64, editable=False)

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "ledger entries"

    def __str__(self) -> str:
        return f"#{self.pk} {self.kind} {self.subject} by {self.actor}"
