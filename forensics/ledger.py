"""The append-only transparency log every app records security events in.

This module imports no other app, so identity, mesh and appliances may all
depend on it. Leaves and the tree head follow RFC 6962 section 2.1.
"""

from __future__ import annotations

import hashlib
import json
from typing import Iterable

from forensics.models import LedgerEntry


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def canonical_leaf(*, kind: str, actor: str, subject: str, payload: dict, recorded_at: str) -> bytes:
    return json.dumps(
        {"kind": kind, "actor": actor, "subject": subject, "payload": payload, "recorded_at": recorded_at},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def record(*, kind: str, actor: str, subject: str, payload: dict | None = None) -> LedgerEntry:
    """Append one event. Call inside the transaction that makes the change, so
    the event and the change commit or roll back together."""
    from django.utils import timezone

    payload = payload or {}
    recorded_at = timezone.now()
    data = canonical_leaf(
        kind=kind, actor=actor, subject=subject, payload=payload, recorded_at=recorded_at.isoformat()
    )
    return LedgerEntry.objects.create(
        kind=kind,
        actor=actor,
        subject=subject,
        payload=payload,
        recorded_at=recorded_at,
        leaf_hash=leaf_hash(data).hex(),
    )


def merkle_root(leaves: Iterable[bytes]) -> bytes:
    """MTH over already-hashed leaves, iteratively (RFC 6962: split at the
    largest power of two below n, which is what pairing left to right and
    promoting a lone last node computes)."""
    level = list(leaves)
    if not level:
        return hashlib.sha256(b"").digest()
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def tree_head() -> dict:
    hashes = LedgerEntry.objects.order_by("id").values_list("leaf_hash", flat=True)
    leaves = [bytes.fromhex(h) for h in hashes]
    return {"size": len(leaves), "root": merkle_root(leaves).hex()}


def actor_label(user) -> str:
    if user is None:
        return "system"
    return f"{'operator' if user.is_staff else 'user'}:{user.pk}"
