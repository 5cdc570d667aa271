"""RFC 6962 Merkle trees: roots, audit paths and consistency proofs, against
the definition in the RFC and the transparency-dev test vectors."""

import hashlib

import pytest

from forensics.merkle import (
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    verify_consistency,
    verify_inclusion,
)
from tests.unit.conftest import load_vectors

# The eight leaves the vectors' trees are built from (RFC 6962 reference data).
REFERENCE_LEAVES = [
    bytes.fromhex(h)
    for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
]
REFERENCE_HASHES = [leaf_hash(leaf) for leaf in REFERENCE_LEAVES]
INCLUSION = load_vectors("inclusion")
CONSISTENCY = load_vectors("consistency")


def reference_mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, written as the RFC states it (recursive split)."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1 << ((n - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + reference_mth(leaves[:k]) + reference_mth(leaves[k:])).digest()


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 33])
def test_merkle_root_matches_rfc6962_definition(size):
    data = [f"entry {i}".encode() for i in range(size)]
    assert merkle_root([leaf_hash(d) for d in data]) == reference_mth(data)


@pytest.mark.parametrize("name, case", INCLUSION, ids=[name for name, _ in INCLUSION])
def test_inclusion_vectors_verify_exactly_when_they_should(name, case):
    def check():
        verify_inclusion(
            leaf=case["leafHash"], index=case["leafIdx"], size=case["treeSize"], proof=case["proof"], root=case["root"]
        )

    if case["wantErr"]:
        with pytest.raises(ProofError):
            check()
    else:
        check()


@pytest.mark.parametrize("name, case", CONSISTENCY, ids=[name for name, _ in CONSISTENCY])
def test_consistency_vectors_verify_exactly_when_they_should(name, case):
    def check():
        verify_consistency(
            size1=case["size1"], size2=case["size2"], root1=case["root1"], root2=case["root2"], proof=case["proof"]
        )

    if case["wantErr"]:
        with pytest.raises(ProofError):
            check()
    else:
        check()


HAPPY_INCLUSION = [(n, c) for n, c in INCLUSION if n.endswith("happy-path.json") and not n.startswith("single")]
HAPPY_CONSISTENCY = [(n, c) for n, c in CONSISTENCY if n.endswith("happy-path.json")]


@pytest.mark.parametrize("name, case", HAPPY_INCLUSION, ids=[name for name, _ in HAPPY_INCLUSION])
def test_generated_audit_paths_are_the_vectors(name, case):
    leaves = REFERENCE_HASHES[: case["treeSize"]]
    assert merkle_root(leaves) == case["root"]
    assert inclusion_proof(case["leafIdx"], leaves) == case["proof"]


@pytest.mark.parametrize("name, case", HAPPY_CONSISTENCY, ids=[name for name, _ in HAPPY_CONSISTENCY])
def test_generated_consistency_proofs_are_the_vectors(name, case):
    leaves = REFERENCE_HASHES[: case["size2"]]
    assert merkle_root(leaves[: case["size1"]]) == case["root1"]
    assert consistency_proof(case["size1"], leaves) == case["proof"]


def test_every_generated_audit_path_verifies_and_a_flipped_bit_does_not():
    hashes = [leaf_hash(f"leaf {i}".encode()) for i in range(34)]
    for size in range(1, len(hashes) + 1):
        root = merkle_root(hashes[:size])
        for index in range(size):
            proof = inclusion_proof(index, hashes[:size])
            verify_inclusion(leaf=hashes[index], index=index, size=size, proof=proof, root=root)
            if proof:
                forged = [bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]]
                with pytest.raises(ProofError):
                    verify_inclusion(leaf=hashes[index], index=index, size=size, proof=forged, root=root)


def test_every_generated_consistency_proof_verifies_and_a_rewritten_leaf_breaks_it():
    hashes = [leaf_hash(f"leaf {i}".encode()) for i in range(34)]
    for size2 in range(1, len(hashes) + 1):
        root2 = merkle_root(hashes[:size2])
        for size1 in range(1, size2 + 1):
            proof = consistency_proof(size1, hashes[:size2])
            verify_consistency(size1=size1, size2=size2, root1=merkle_root(hashes[:size1]), root2=root2, proof=proof)
            rewritten = [leaf_hash(b"rewritten"), *hashes[1:size1]]
            if size1 < size2:
                with pytest.raises(ProofError):
                    verify_consistency(
                        size1=size1, size2=size2, root1=merkle_root(rewritten), root2=root2, proof=proof
                    )


def test_proofs_are_refused_for_leaves_outside_the_tree():
    hashes = REFERENCE_HASHES[:3]
    with pytest.raises(ProofError):
        inclusion_proof(3, hashes)
    with pytest.raises(ProofError):
        consistency_proof(0, hashes)
    with pytest.raises(ProofError):
        consistency_proof(4, hashes)
