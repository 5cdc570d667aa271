"""Verify an InfraSim evidence bundle offline: no database, no server, no Django.

This file is meant to be copied. It depends on the Python standard library and
PyNaCl only, so a third party can check a memory acquisition with nothing of
InfraSim's but this module:

    python offline_verify.py BUNDLE.json [DUMPFILE] [--log-key VKEY] [--operator-key HEX]

The formats it reads are defined here, once, and the server's signing code
(forensics.signatures) imports them, so signer and verifier cannot drift.

- DSSE (https://github.com/secure-systems-lab/dsse): the signature covers
  PAE(payloadType, payload).
- in-toto Statement v1 (https://github.com/in-toto/attestation).
- RFC 6962 / RFC 9162 Merkle inclusion and consistency proofs.
- C2SP signed-note and tlog-checkpoint (https://c2sp.org/signed-note,
  https://c2sp.org/tlog-checkpoint), Ed25519 note keys.
"""

from __future__ import annotations

import base64
import hashlib

DSSE_PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://infrasim.dev/attestations/memory-acquisition/v1"
BUNDLE_MEDIA_TYPE = "application/vnd.infrasim.evidence.v1+json"

# C2SP signed-note: the signature type byte of an Ed25519 key.
NOTE_ALG_ED25519 = 0x01
NOTE_SIGNATURE_PREFIX = "\u2014 "  # an em dash and a space start every signature line


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what the signatures cover."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(type_bytes), type_bytes, len(payload), payload)


def key_id(public_key: bytes) -> str:
    """An Ed25519 signing key's ID: the hex SHA-256 of its 32 raw bytes."""
    return hashlib.sha256(public_key).hexdigest()


def note_key_hash(name: str, public_key: bytes) -> bytes:
    """C2SP signed-note key ID: the first 4 bytes of
    SHA-256(name || 0x0A || signature type || public key)."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([NOTE_ALG_ED25519]) + public_key).digest()[:4]


def format_vkey(name: str, public_key: bytes) -> str:
    """The note verifier key: <name>+<hex key hash>+<base64(0x01 || public key)>."""
    return f"{name}+{note_key_hash(name, public_key).hex()}+{b64(bytes([NOTE_ALG_ED25519]) + public_key)}"


def checkpoint_body(origin: str, size: int, root: bytes) -> str:
    """The note text of a C2SP tlog-checkpoint: origin, tree size, base64 root,
    each line ending in a newline."""
    return f"{origin}\n{size}\n{b64(root)}\n"
