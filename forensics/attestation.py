"""What an acquisition proves, and the bundle that carries the proof.

The statement is an in-toto Statement v1 whose subject is the dump and whose
predicate is the chain of custody; it travels in a DSSE envelope signed with
the requester's Ed25519 key. The log entry binds the envelope: it names the
subject's SHA-256 and the SHA-256 of the exact payload bytes. The bundle adds
an inclusion proof against a signed checkpoint, so forensics.offline_verify
can check all of it without InfraSim.
"""

from __future__ import annotations

import base64
import hashlib

from forensics import ledger
from forensics.models import Acquisition
from forensics.offline_verify import (
    ATTESTATION_KIND,
    BUNDLE_MEDIA_TYPE,
    DSSE_PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    b64,
    pae,
)
from forensics.signatures import canonical_json, log_vkey


def statement(*, subject_name: str, sha256: str, custody: dict) -> bytes:
    return canonical_json({
        "_type": STATEMENT_TYPE,
        "subject": [{"name": subject_name, "digest": {"sha256": sha256}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": custody,
    })


def envelope_payload(envelope: dict) -> bytes:
    return base64.b64decode(envelope["payload"])


def envelope_pae(envelope: dict) -> bytes:
    """The bytes both the key and the passkey sign."""
    return pae(envelope["payloadType"], envelope_payload(envelope))


def cosign_challenge(envelope: dict) -> bytes:
    return hashlib.sha256(envelope_pae(envelope)).digest()


def log_payload(acquisition: Acquisition) -> dict:
    """The attestation's log entry: enough to find and bind it, nothing more
    (entries are public by hash, readable by their people)."""
    return {
        "subject_name": acquisition.evidence_name,
        "subject_sha256": acquisition.sha256,
        "payload_sha256": hashlib.sha256(envelope_payload(acquisition.envelope)).hexdigest(),
        "payload_type": DSSE_PAYLOAD_TYPE,
        "keyid": acquisition.envelope["signatures"][0]["keyid"],
        "case_ref": acquisition.case_ref,
    }


def bundle(acquisition: Acquisition) -> dict:
    """The evidence bundle, with an inclusion proof in the log as it is now
    and the checkpoint that signs that tree."""
    entry = ledger.entry_at(acquisition.log_index)
    note = ledger.checkpoint()
    head = ledger.parse_checkpoint_note(note)
    proof = ledger.inclusion_proof(acquisition.log_index, head.size)
    key = acquisition.signing_key
    return {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "dsseEnvelope": acquisition.envelope,
        "publicKey": {"keyid": key.key_id, "ed25519": b64(bytes(key.public_key))},
        "passkeyCosignature": acquisition.cosignature,
        "tlogEntry": {
            "logIndex": acquisition.log_index,
            "canonicalizedBody": b64(bytes(entry.leaf)),
            "inclusionProof": {
                "treeSize": head.size,
                "rootHash": b64(head.root),
                "hashes": [b64(node) for node in proof],
                "checkpoint": note,
            },
        },
        "logKey": log_vkey(),
    }
