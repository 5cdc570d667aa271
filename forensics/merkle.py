"""RFC 6962 Merkle tree hashing, audit paths and consistency proofs.

Pure functions over leaf hashes (no Django), so the ledger, a verifier outside
the site and the fast unit tests share one implementation. Generation follows
RFC 6962 section 2.1.1 (PATH) and 2.1.2 (SUBPROOF); verification follows
RFC 9162 sections 2.1.3.2 and 2.1.4.2.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

# Verification lives in the standalone verifier so a third party checks
# proofs with the very code the site's tests check; re-exported from here.
from forensics.offline_verify import (  # noqa: F401
    HASH_SIZE,
    ProofError,
    _check_hashes,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)


def empty_root() -> bytes:
    return hashlib.sha256(b"").digest()


def merkle_root(leaves: Iterable[bytes]) -> bytes:
    """MTH over already-hashed leaves, iteratively (RFC 6962: split at the
    largest power of two below n, which is what pairing left to right and
    promoting a lone last node computes)."""
    level = list(leaves)
    if not level:
        return empty_root()
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """The audit path of leaf `index` in the tree of `leaves` (leaf hashes)."""
    if not 0 <= index < len(leaves):
        raise ProofError(f"leaf index {index} is outside a tree of {len(leaves)}")
    path: list[bytes] = []
    # PATH(m, D[n]) unrolled: descend from the root, collecting the sibling
    # subtree roots, then emit them leaf-side first.
    start, end = 0, len(leaves)
    while end - start > 1:
        k = _split(end - start)
        if index - start < k:
            path.append(merkle_root(leaves[start + k : end]))
            end = start + k
        else:
            path.append(merkle_root(leaves[start : start + k]))
            start += k
    return path[::-1]


def consistency_proof(size1: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]): shows the tree of the first `size1` leaves is a prefix
    of the tree of all `leaves`."""
    size2 = len(leaves)
    if not 0 < size1 <= size2:
        raise ProofError(f"no consistency proof from size {size1} to size {size2}")
    proof: list[bytes] = []
    # SUBPROOF(m, D[start:end], complete) unrolled, as above.
    start, end, complete = 0, size2, True
    m = size1
    while True:
        n = end - start
        if m == n:
            if not complete:
                proof.append(merkle_root(leaves[start:end]))
            break
        k = _split(n)
        if m <= k:
            proof.append(merkle_root(leaves[start + k : end]))
            end = start + k
        else:
            proof.append(merkle_root(leaves[start : start + k]))
            start += k
            m -= k
            complete = False
    return proof[::-1]
