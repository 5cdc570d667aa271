"""RFC 6962 Merkle tree hashing, audit paths and consistency proofs.

Pure functions over leaf hashes (no Django), so the ledger, a verifier outside
the site and the fast unit tests share one implementation. Generation follows
RFC 6962 section 2.1.1 (PATH) and 2.1.2 (SUBPROOF); verification follows
RFC 9162 sections 2.1.3.2 and 2.1.4.2.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence


HASH_SIZE = 32


class ProofError(ValueError):
    """A proof that does not prove what it claims."""


def _check_hashes(*hashes: bytes) -> None:
    if any(len(h) != HASH_SIZE for h in hashes):
        raise ProofError(f"hashes are {HASH_SIZE} bytes")


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


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


def verify_inclusion(*, leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Raise ProofError unless `proof` shows leaf hash `leaf` at `index` in the
    tree of `size` leaves with root `root`."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of {size}")
    _check_hashes(leaf, *proof)
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise ProofError("the proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the proof is shorter than the tree is deep")
    if r != root:
        raise ProofError("the proof leads to another root")


def verify_consistency(*, size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]) -> None:
    """Raise ProofError unless `proof` shows the tree (size1, root1) is a
    prefix of the tree (size2, root2)."""
    if not 0 < size1 <= size2:
        raise ProofError(f"no consistency proof from size {size1} to size {size2}")
    if size1 == size2:
        if proof:
            raise ProofError("equal sizes take an empty proof")
        if root1 != root2:
            raise ProofError("equal sizes with different roots")
        return
    if not proof:
        raise ProofError("empty proof")
    _check_hashes(*proof)
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the proof is longer than the trees are deep")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the proof is shorter than the trees are deep")
    if fr != root1 or sr != root2:
        raise ProofError("the proof leads to other roots")
