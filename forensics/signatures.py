"""Signing: DSSE envelopes and C2SP signed notes with Ed25519 (PyNaCl).

The formats come from forensics.offline_verify, the standalone verifier, so
what is signed here is exactly what a third party checks there.
"""

from __future__ import annotations

import json

import nacl.hash
import nacl.encoding
import nacl.signing
from django.conf import settings

from forensics.offline_verify import (
    DSSE_PAYLOAD_TYPE,
    NOTE_SIGNATURE_PREFIX,
    b64,
    checkpoint_body,
    format_vkey,
    key_id,
    note_key_hash,
    pae,
)


def canonical_json(value) -> bytes:
    """Sorted keys, no spaces, UTF-8: one byte string per value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sign_envelope(payload: bytes, signing_key: nacl.signing.SigningKey,
                  payload_type: str = DSSE_PAYLOAD_TYPE) -> dict:
    signature = signing_key.sign(pae(payload_type, payload)).signature
    return {
        "payloadType": payload_type,
        "payload": b64(payload),
        "signatures": [{"keyid": key_id(bytes(signing_key.verify_key)), "sig": b64(signature)}],
    }


def sign_note(body: str, name: str, signing_key: nacl.signing.SigningKey) -> str:
    """`body` followed by a blank line and one signature line."""
    if not body.endswith("\n"):
        raise ValueError("a note's text ends with a newline")
    signature = signing_key.sign(body.encode("utf-8")).signature
    key_hash = note_key_hash(name, bytes(signing_key.verify_key))
    return f"{body}\n{NOTE_SIGNATURE_PREFIX}{name} {b64(key_hash + signature)}\n"


def log_origin() -> str:
    return settings.LEDGER_ORIGIN


def log_signing_key() -> nacl.signing.SigningKey:
    """The transparency log's checkpoint key, derived from the master key, so
    every process of a deployment signs with the same key and none is stored.
    Rotating the master key rotates the log key: publish the new vkey."""
    seed = nacl.hash.blake2b(
        b"infrasim transparency log checkpoint key v1",
        key=settings.INFRASIM_MASTER_KEY,
        digest_size=32,
        encoder=nacl.encoding.RawEncoder,
    )
    return nacl.signing.SigningKey(seed)


def log_vkey() -> str:
    return format_vkey(log_origin(), bytes(log_signing_key().verify_key))


def sign_checkpoint(size: int, root: bytes) -> str:
    return sign_note(checkpoint_body(log_origin(), size, root), log_origin(), log_signing_key())
