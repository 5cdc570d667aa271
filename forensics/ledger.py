"""The append-only transparency log every app records security events in.

This module imports no other app, so identity, mesh and appliances may all
depend on it. Leaves and the tree head follow RFC 6962 section 2.1
(forensics.merkle). Each row keeps the exact bytes of its leaf, so verify()
can recompute every hash and the root from the database alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from django.utils import timezone

from forensics.merkle import leaf_hash, merkle_root
from forensics.models import LedgerEntry

LEAF_FIELDS = ("kind", "actor", "subject", "payload", "recorded_at")


def canonical_leaf(*, kind: str, actor: str, subject: str, payload: dict, recorded_at: str) -> bytes:
    return json.dumps(
        {"kind": kind, "actor": actor, "subject": subject, "payload": payload, "recorded_at": recorded_at},
        sort_keys=True,
        separators=(",", ":"),
        allow_nan=False,
    ).encode()


def record(*, kind: str, actor: str, subject: str, payload: dict | None = None) -> LedgerEntry:
    """Append one event. Call inside the transaction that makes the change, so
    the event and the change commit or roll back together."""
    recorded_at = timezone.now()
    data = canonical_leaf(
        kind=kind, actor=actor, subject=subject, payload=payload or {}, recorded_at=recorded_at.isoformat()
    )
    return LedgerEntry.objects.create(
        kind=kind,
        actor=actor,
        subject=subject,
        # The payload as the leaf encodes it (tuples become lists...), so the
        # row and the leaf say the same thing.
        payload=json.loads(data)["payload"],
        recorded_at=recorded_at,
        leaf=data,
        leaf_version=LedgerEntry.LEAF_RECORDED,
        leaf_hash=leaf_hash(data).hex(),
    )


def tree_head() -> dict:
    hashes = LedgerEntry.objects.order_by("id").values_list("leaf_hash", flat=True)
    leaves = [bytes.fromhex(h) for h in hashes]
    return {"size": len(leaves), "root": merkle_root(leaves).hex()}


@dataclass(frozen=True)
class Verification:
    size: int
    root: str
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _leaf_disagreements(entry: LedgerEntry, data: bytes) -> list[str]:
    try:
        leaf = json.loads(data)
    except ValueError:
        return ["the stored leaf is not JSON"]
    if not isinstance(leaf, dict) or sorted(leaf) != sorted(LEAF_FIELDS):
        return [f"the stored leaf does not hold exactly {', '.join(LEAF_FIELDS)}"]
    found = []
    for name in ("kind", "actor", "subject", "payload"):
        if leaf[name] != getattr(entry, name):
            found.append(f"{name} is {getattr(entry, name)!r} but the leaf says {leaf[name]!r}")
    try:
        hashed_time = datetime.fromisoformat(leaf["recorded_at"])
    except (TypeError, ValueError):
        hashed_time = None
    if hashed_time != entry.recorded_at:
        found.append(f"recorded_at is {entry.recorded_at.isoformat()} but the leaf says {leaf['recorded_at']!r}")
    return found


def verify(*, trusted_head: dict | None = None) -> Verification:
    """Recompute every leaf hash from the stored leaf bytes, check that each
    leaf says what its row says, and recompute the root. With `trusted_head`
    (an earlier tree_head()), also check that the ledger still starts with
    exactly that tree, so rows deleted or rewritten since are caught."""
    problems: list[str] = []
    hashes: list[bytes] = []
    for entry in LedgerEntry.objects.order_by("id").iterator(chunk_size=2000):
        data = bytes(entry.leaf)
        computed = leaf_hash(data)
        hashes.append(computed)
        if computed.hex() != entry.leaf_hash:
            problems.append(f"entry #{entry.pk}: leaf_hash does not match the stored leaf")
        problems.extend(f"entry #{entry.pk}: {found}" for found in _leaf_disagreements(entry, data))
    if trusted_head is not None:
        size = trusted_head["size"]
        if size > len(hashes):
            problems.append(f"the ledger holds {len(hashes)} entries, fewer than the trusted head's {size}")
        elif merkle_root(hashes[:size]).hex() != trusted_head["root"]:
            problems.append(f"the first {size} entries no longer have the trusted root {trusted_head['root']}")
    return Verification(size=len(hashes), root=merkle_root(hashes).hex(), problems=problems)


def actor_label(user) -> str:
    if user is None:
        return "system"
    return f"{'operator' if user.is_staff else 'user'}:{user.pk}"
