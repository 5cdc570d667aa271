"""Verify an InfraSim evidence bundle offline: no database, no server, no Django.

This file is meant to be copied. It depends on the Python standard library and
PyNaCl only, so a third party can check a memory acquisition with nothing of
InfraSim's but this module:

    python offline_verify.py BUNDLE.json [DUMPFILE] [--log-key VKEY] [--operator-key KEYID_OR_BASE64]

Without --log-key and --operator-key the keys come from the bundle itself, which
proves only that the bundle is consistent: compare the key IDs it prints with
the ones the server publishes (/api/forensics/keys, /api/forensics/log/key).

The formats it reads are defined here, once, and the server's signing code
(forensics.signatures) imports them, so signer and verifier cannot drift.

- DSSE (https://github.com/secure-systems-lab/dsse): the signature covers
  PAE(payloadType, payload).
- in-toto Statement v1 (https://github.com/in-toto/attestation).
- RFC 6962 / RFC 9162 Merkle inclusion and consistency proofs.
- C2SP signed-note and tlog-checkpoint (https://c2sp.org/signed-note,
  https://c2sp.org/tlog-checkpoint), Ed25519 note keys.
- WebAuthn assertions (https://www.w3.org/TR/webauthn-3/) with COSE keys
  (RFC 9052/9053) in ES256, EdDSA and RS256, read by a minimal CBOR decoder.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence
from urllib.parse import urlsplit

import nacl.exceptions
import nacl.signing

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


# --- RFC 6962 / RFC 9162 Merkle proofs ---------------------------------------------

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


def verify_inclusion(*, leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Raise ProofError unless `proof` shows leaf hash `leaf` at `index` in the
    tree of `size` leaves with root `root` (RFC 9162 section 2.1.3.2)."""
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
    prefix of the tree (size2, root2) (RFC 9162 section 2.1.4.2)."""
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


# --- C2SP signed notes and checkpoints -----------------------------------------------

# The signed-note spec asks verifiers to bound the signatures they read and to
# accept at least 16; witnesses rarely add more than a handful.
MAX_NOTE_SIGNATURES = 100


class NoteError(ValueError):
    """A note, checkpoint or verifier key that is malformed or not signed."""


def _valid_key_name(name: str) -> bool:
    return bool(name) and "+" not in name and not any(c.isspace() for c in name)


def _strict_b64(text: str) -> bytes:
    """Standard base64 with padding and nothing else (binascii.Error, a
    ValueError, otherwise)."""
    return base64.b64decode(text.encode("ascii"), validate=True)


def parse_vkey(vkey: str) -> tuple[str, bytes, bytes]:
    """`<name>+<hex key hash>+<base64(0x01 || 32-byte Ed25519 key)>` into
    (name, 4-byte key hash, 32-byte public key); the hash must be the key's."""
    parts = vkey.strip().split("+", 2)  # base64 may hold "+", a name may not
    if len(parts) != 3:
        raise NoteError("a verifier key is <name>+<key hash>+<key>")
    name, hash_hex, key_b64 = parts
    if not _valid_key_name(name):
        raise NoteError(f"the verifier key's name {name!r} is empty or holds spaces")
    try:
        key_hash = bytes.fromhex(hash_hex)
        key = _strict_b64(key_b64)
    except (ValueError, UnicodeEncodeError):
        raise NoteError("the verifier key's hash is not hex or its key is not base64") from None
    if len(hash_hex) != 8 or hash_hex != hash_hex.lower():
        raise NoteError("the verifier key's hash is not 8 lowercase hex digits")
    if len(key) != 33 or key[0] != NOTE_ALG_ED25519:
        raise NoteError("the verifier key is not an Ed25519 note key (0x01 and 32 bytes)")
    public_key = key[1:]
    if note_key_hash(name, public_key) != key_hash:
        raise NoteError("the verifier key's hash does not belong to its name and key")
    return name, key_hash, public_key


def verify_note(text: str, vkey: str) -> str:
    """The text of the signed note `text` once a signature by `vkey` verifies.
    Signatures by other keys are ignored, as the spec requires, so witnesses
    may cosign; a bad signature by `vkey` rejects the whole note."""
    name, key_hash, public_key = parse_vkey(vkey)
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise NoteError("the note holds control characters other than newline")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise NoteError("the note is not valid UTF-8") from None
    split = text.rfind("\n\n")
    if split < 0:
        raise NoteError("the note has no blank line before its signatures")
    body, signature_block = text[: split + 1], text[split + 2 :]
    if not body.strip("\n") or not signature_block.endswith("\n"):
        raise NoteError("the note's text is empty or its signatures do not end with a newline")
    lines = signature_block[:-1].split("\n")
    if len(lines) > MAX_NOTE_SIGNATURES:
        raise NoteError(f"the note carries more than {MAX_NOTE_SIGNATURES} signatures")
    verified = False
    verifier = nacl.signing.VerifyKey(public_key)
    for line in lines:
        if not line.startswith(NOTE_SIGNATURE_PREFIX):
            raise NoteError(f"a signature line does not start with an em dash and a space: {line[:40]!r}")
        signer, _, encoded = line[len(NOTE_SIGNATURE_PREFIX) :].partition(" ")
        try:
            signature = _strict_b64(encoded)
        except (ValueError, UnicodeEncodeError):
            signature = b""
        if not _valid_key_name(signer) or len(signature) < 5:
            raise NoteError(f"malformed signature line: {line[:40]!r}")
        if signer != name or signature[:4] != key_hash:
            continue
        try:
            verifier.verify(body.encode("utf-8"), signature[4:])
        except (nacl.exceptions.BadSignatureError, ValueError):
            raise NoteError(f"the signature by {name} does not verify") from None
        verified = True
    if not verified:
        raise NoteError(f"the note carries no signature by {name}+{key_hash.hex()}")
    return body


def parse_checkpoint(body: str) -> tuple[str, int, bytes]:
    """A tlog-checkpoint's note text as (origin, tree size, root hash).
    Extension lines are allowed, as the spec says, and not interpreted."""
    if not body.endswith("\n"):
        raise NoteError("a checkpoint ends with a newline")
    lines = body[:-1].split("\n")
    if len(lines) < 3 or any(not line for line in lines):
        raise NoteError("a checkpoint is an origin, a tree size and a root hash, on non-empty lines")
    origin, size_text, root_text = lines[:3]
    if not size_text.isascii() or not size_text.isdigit() or (size_text.startswith("0") and size_text != "0"):
        raise NoteError(f"the checkpoint's tree size {size_text!r} is not a decimal number")
    size = int(size_text)
    if size >= 1 << 64:
        raise NoteError("the checkpoint's tree size does not fit in 64 bits")
    try:
        root = _strict_b64(root_text)
    except (ValueError, UnicodeEncodeError):
        raise NoteError("the checkpoint's root hash is not base64") from None
    if len(root) != HASH_SIZE:
        raise NoteError(f"the checkpoint's root hash is {len(root)} bytes, not {HASH_SIZE}")
    return origin, size, root


# --- CBOR (RFC 8949), just enough for COSE keys ---------------------------------------

class CborError(ValueError):
    """CBOR this decoder does not read: malformed, or outside the subset."""


_CBOR_MAX_DEPTH = 8


def cbor_decode(data: bytes) -> object:
    """One CBOR item made of maps, integers and byte or text strings, with
    definite lengths, and nothing after it."""
    item, end = _cbor_item(data, 0, 0)
    if end != len(data):
        raise CborError(f"{len(data) - end} bytes follow the CBOR item")
    return item


def _cbor_argument(data: bytes, pos: int) -> tuple[int, int, int]:
    if pos >= len(data):
        raise CborError("the CBOR item is truncated")
    major, info = data[pos] >> 5, data[pos] & 0x1F
    pos += 1
    if info < 24:
        return major, info, pos
    if info > 27:
        raise CborError("indefinite lengths and reserved encodings are not read")
    width = 1 << (info - 24)
    if pos + width > len(data):
        raise CborError("the CBOR item is truncated")
    return major, int.from_bytes(data[pos : pos + width], "big"), pos + width


def _cbor_item(data: bytes, pos: int, depth: int) -> tuple[object, int]:
    major, argument, pos = _cbor_argument(data, pos)
    if major == 0:
        return argument, pos
    if major == 1:
        return -1 - argument, pos
    if major in (2, 3):
        end = pos + argument
        if end > len(data):
            raise CborError("a CBOR string runs past the end")
        raw = data[pos:end]
        if major == 2:
            return raw, end
        try:
            return raw.decode("utf-8"), end
        except UnicodeDecodeError:
            raise CborError("a CBOR text string is not UTF-8") from None
    if major == 5:
        if depth >= _CBOR_MAX_DEPTH:
            raise CborError("CBOR maps nest too deeply")
        result: dict = {}
        for _ in range(argument):
            key, pos = _cbor_item(data, pos, depth + 1)
            if isinstance(key, dict):
                raise CborError("a CBOR map key is a map")
            if key in result:
                raise CborError(f"the CBOR map repeats the key {key!r}")
            result[key], pos = _cbor_item(data, pos, depth + 1)
        return result, pos
    raise CborError(f"CBOR major type {major} (arrays, tags, floats, simple values) is not read")


# --- WebAuthn signature algorithms ----------------------------------------------------

# NIST P-256 (FIPS 186-5, SEC 2): y^2 = x^3 - 3x + b over GF(p), order n.
_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_G = (
    0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
    1,
)
_INFINITY = (1, 1, 0)

# Jacobian coordinates (x = X/Z^2, y = Y/Z^3) keep inversions out of the loop.
_Point = tuple[int, int, int]


def _double(point: _Point) -> _Point:
    x, y, z = point
    if z == 0 or y == 0:
        return _INFINITY
    delta, gamma = z * z % _P, y * y % _P
    beta = x * gamma % _P
    alpha = 3 * (x - delta) * (x + delta) % _P
    x3 = (alpha * alpha - 8 * beta) % _P
    z3 = ((y + z) * (y + z) - gamma - delta) % _P
    y3 = (alpha * (4 * beta - x3) - 8 * gamma * gamma) % _P
    return x3, y3, z3


def _add(p1: _Point, p2: _Point) -> _Point:
    x1, y1, z1 = p1
    x2, y2, z2 = p2
    if z1 == 0:
        return p2
    if z2 == 0:
        return p1
    z1z1, z2z2 = z1 * z1 % _P, z2 * z2 % _P
    u1, u2 = x1 * z2z2 % _P, x2 * z1z1 % _P
    s1, s2 = y1 * z2 * z2z2 % _P, y2 * z1 * z1z1 % _P
    h, r = (u2 - u1) % _P, (s2 - s1) % _P
    if h == 0:
        return _double(p1) if r == 0 else _INFINITY
    h2 = h * h % _P
    h3, u1h2 = h * h2 % _P, u1 * h2 % _P
    x3 = (r * r - h3 - 2 * u1h2) % _P
    y3 = (r * (u1h2 - x3) - s1 * h3) % _P
    return x3, y3, z1 * z2 * h % _P


def _combination(k1: int, p1: _Point, k2: int, p2: _Point) -> _Point:
    """k1*p1 + k2*p2 in one pass over the bits (Shamir's trick)."""
    both = _add(p1, p2)
    result = _INFINITY
    for bit in range(max(k1.bit_length(), k2.bit_length()) - 1, -1, -1):
        result = _double(result)
        pick = (k1 >> bit & 1, k2 >> bit & 1)
        if pick == (1, 1):
            result = _add(result, both)
        elif pick == (1, 0):
            result = _add(result, p1)
        elif pick == (0, 1):
            result = _add(result, p2)
    return result


def _p256_public_key(x: int, y: int) -> _Point:
    if not (0 <= x < _P and 0 <= y < _P) or (y * y - (x * x * x - 3 * x + _B)) % _P:
        raise ValueError("the ES256 public key is not a point on P-256")
    return x, y, 1


def _der_integer(data: bytes, pos: int) -> tuple[int, int]:
    if pos + 2 > len(data) or data[pos] != 0x02:
        raise ValueError("the ECDSA signature is not DER: expected an INTEGER")
    length = data[pos + 1]
    body = data[pos + 2 : pos + 2 + length]
    if not 0 < length <= 33 or len(body) != length:
        raise ValueError("the ECDSA signature is not DER: bad INTEGER length")
    if body[0] & 0x80 or (length > 1 and body[0] == 0 and not body[1] & 0x80):
        raise ValueError("the ECDSA signature is not DER: negative or non-minimal INTEGER")
    return int.from_bytes(body, "big"), pos + 2 + length


def _der_ecdsa_signature(signature: bytes) -> tuple[int, int]:
    """SEQUENCE { r INTEGER, s INTEGER }, in DER and nothing else."""
    if len(signature) < 8 or signature[0] != 0x30 or signature[1] != len(signature) - 2:
        raise ValueError("the ECDSA signature is not a DER SEQUENCE")
    r, pos = _der_integer(signature, 2)
    s, pos = _der_integer(signature, pos)
    if pos != len(signature):
        raise ValueError("the ECDSA signature has bytes after its SEQUENCE")
    return r, s


def verify_es256(x: int, y: int, message: bytes, signature: bytes) -> bool:
    """ECDSA P-256 with SHA-256 (FIPS 186-5 section 6.4.2), DER signature."""
    q = _p256_public_key(x, y)
    r, s = _der_ecdsa_signature(signature)
    if not (0 < r < _N and 0 < s < _N):
        return False
    e = int.from_bytes(hashlib.sha256(message).digest(), "big")
    w = pow(s, -1, _N)
    rx, _, rz = _combination(e * w % _N, _G, r * w % _N, q)
    if rz == 0:
        return False
    return rx * pow(rz * rz % _P, -1, _P) % _P % _N == r


# DigestInfo for SHA-256 (RFC 8017 section 9.2, note 1).
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
# Below 2048 bits RSA is factorable by well-funded adversaries (NIST SP 800-131A).
MIN_RSA_BITS = 2048


def _check_rsa_key(n: int, e: int) -> None:
    if n.bit_length() < MIN_RSA_BITS or e < 3 or not e & 1:
        raise ValueError(f"the RS256 key is shorter than {MIN_RSA_BITS} bits or has a bad exponent")


def verify_rs256(n: int, e: int, message: bytes, signature: bytes) -> bool:
    """RSASSA-PKCS1-v1_5 with SHA-256 (RFC 8017 section 8.2.2)."""
    _check_rsa_key(n, e)
    k = (n.bit_length() + 7) // 8
    s = int.from_bytes(signature, "big")
    if len(signature) != k or s >= n:
        return False
    t = _SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
    expected = b"\x00\x01" + b"\xff" * (k - len(t) - 3) + b"\x00" + t
    return hmac.compare_digest(pow(s, e, n).to_bytes(k, "big"), expected)


def verify_ed25519(public_key: bytes, message: bytes, signature: bytes) -> bool:
    if len(signature) != 64:
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except nacl.exceptions.BadSignatureError:
        return False
    return True


# COSE labels and values (RFC 9052 section 7, RFC 9053, RFC 8230).
COSE_KTY, COSE_ALG = 1, 3
COSE_KTY_OKP, COSE_KTY_EC2, COSE_KTY_RSA = 1, 2, 3
COSE_ALG_ES256, COSE_ALG_EDDSA, COSE_ALG_RS256 = -7, -8, -257
COSE_CRV_P256, COSE_CRV_ED25519 = 1, 6

_Verifier = Callable[[bytes, bytes], bool]


def _cose_bytes(key: dict, label: int, size: int | None = None) -> bytes:
    value = key.get(label)
    if not isinstance(value, bytes) or (size is not None and len(value) != size):
        raise ValueError(f"COSE key parameter {label} is not {size or 'some'} bytes")
    return value


def cose_verifier(cose_key: bytes) -> tuple[str, _Verifier]:
    """The algorithm name and a verify(message, signature) function of a
    COSE_Key in ES256, EdDSA (Ed25519) or RS256."""
    key = cbor_decode(cose_key)
    if not isinstance(key, dict):
        raise ValueError("the COSE key is not a map")
    kty, alg = key.get(COSE_KTY), key.get(COSE_ALG)
    if (kty, alg) == (COSE_KTY_EC2, COSE_ALG_ES256):
        if key.get(-1) != COSE_CRV_P256:
            raise ValueError("an ES256 key is on curve P-256")
        x = int.from_bytes(_cose_bytes(key, -2, 32), "big")
        y = int.from_bytes(_cose_bytes(key, -3, 32), "big")
        _p256_public_key(x, y)
        return "ES256", lambda message, signature: verify_es256(x, y, message, signature)
    if (kty, alg) == (COSE_KTY_OKP, COSE_ALG_EDDSA):
        if key.get(-1) != COSE_CRV_ED25519:
            raise ValueError("only Ed25519 is read for EdDSA")
        public = _cose_bytes(key, -2, 32)
        return "EdDSA", lambda message, signature: verify_ed25519(public, message, signature)
    if (kty, alg) == (COSE_KTY_RSA, COSE_ALG_RS256):
        n = int.from_bytes(_cose_bytes(key, -1), "big")
        e = int.from_bytes(_cose_bytes(key, -2), "big")
        _check_rsa_key(n, e)
        return "RS256", lambda message, signature: verify_rs256(n, e, message, signature)
    raise ValueError(f"COSE key type {kty!r} with algorithm {alg!r} is not ES256, EdDSA or RS256")


# --- the bundle -------------------------------------------------------------------------

class VerificationFailed(Exception):
    """The named check failed; `report` holds the checks that passed before."""

    def __init__(self, check: str, message: str):
        super().__init__(f"{check}: {message}")
        self.check = check
        self.message = message
        self.report = Report()


@dataclass
class Report:
    """The checks that passed, as (name, detail), in order; the checks not
    made, with why; and the facts a person compares with what they know."""

    checks: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    verified: bool = False
    keyid: str = ""
    log_key: str = ""
    log_index: int | None = None
    tree_size: int | None = None
    subject_name: str = ""
    subject_sha256: str = ""
    cosigned: bool = False
    user_verified: bool | None = None
    operator_key_pinned: bool = False
    log_key_pinned: bool = False

    @property
    def pinned(self) -> bool:
        """Both trust anchors were given by the person verifying; otherwise
        the bundle vouches for its own keys."""
        return self.operator_key_pinned and self.log_key_pinned


@dataclass(frozen=True)
class _Cosignature:
    credential_id: bytes
    public_key: bytes
    authenticator_data: bytes
    client_data_json: bytes
    signature: bytes
    rp_id: str
    origin: str


@dataclass(frozen=True)
class _Bundle:
    payload_type: str
    payload: bytes
    signatures: list[tuple[str, bytes]]
    keyid: str
    public_key: bytes
    cosignature: _Cosignature | None
    log_index: int
    body: bytes
    tree_size: int
    root: bytes
    hashes: list[bytes]
    checkpoint: str
    log_key: str


@contextmanager
def _checking(check: str) -> Iterator[None]:
    """Turn the ways data can be wrong into a failure of `check`."""
    try:
        yield
    except (ValueError, RecursionError) as exc:
        raise VerificationFailed(check, str(exc)) from None


_JSON_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer"}


def _get(container: dict, key: str, kind: type, where: str):
    value = container.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{where}{key} is missing or not {_JSON_TYPE_NAMES[kind]}")
    return value


def _decode_b64(text: str, name: str, *, urlsafe: bool = False) -> bytes:
    try:
        if urlsafe:  # WebAuthn leaves the padding off
            unpadded = text.rstrip("=").encode("ascii")
            return base64.b64decode(unpadded + b"=" * (-len(unpadded) % 4), altchars=b"-_", validate=True)
        return _strict_b64(text)
    except (binascii.Error, ValueError):
        raise ValueError(f"{name} is not {'base64url' if urlsafe else 'base64'}") from None


def _get_b64(container: dict, key: str, where: str, *, urlsafe: bool = False) -> bytes:
    return _decode_b64(_get(container, key, str, where), f"{where}{key}", urlsafe=urlsafe)


def _parse_bundle(bundle: dict) -> _Bundle:
    if not isinstance(bundle, dict):
        raise ValueError("the bundle is not a JSON object")
    if bundle.get("mediaType") != BUNDLE_MEDIA_TYPE:
        raise ValueError(f"mediaType is {bundle.get('mediaType')!r}, not {BUNDLE_MEDIA_TYPE}")
    envelope = _get(bundle, "dsseEnvelope", dict, "")
    signatures = _get(envelope, "signatures", list, "dsseEnvelope.")
    if not signatures:
        raise ValueError("dsseEnvelope.signatures is empty")
    parsed_signatures = []
    for number, signature in enumerate(signatures):
        where = f"dsseEnvelope.signatures[{number}]."
        if not isinstance(signature, dict):
            raise ValueError(f"{where[:-1]} is not an object")
        parsed_signatures.append((_get(signature, "keyid", str, where), _get_b64(signature, "sig", where)))
    public = _get(bundle, "publicKey", dict, "")
    public_key = _get_b64(public, "ed25519", "publicKey.")
    if len(public_key) != 32:
        raise ValueError(f"publicKey.ed25519 is {len(public_key)} bytes, not the 32 of an Ed25519 key")
    entry = _get(bundle, "tlogEntry", dict, "")
    proof = _get(entry, "inclusionProof", dict, "tlogEntry.")
    hashes = _get(proof, "hashes", list, "tlogEntry.inclusionProof.")
    if not all(isinstance(h, str) for h in hashes):
        raise ValueError("tlogEntry.inclusionProof.hashes holds something other than strings")
    log_index = _get(entry, "logIndex", int, "tlogEntry.")
    tree_size = _get(proof, "treeSize", int, "tlogEntry.inclusionProof.")
    if log_index < 0 or tree_size < 1:
        raise ValueError("tlogEntry.logIndex is negative or inclusionProof.treeSize is not positive")
    cosignature = bundle.get("passkeyCosignature")
    if cosignature is not None and not isinstance(cosignature, dict):
        raise ValueError("passkeyCosignature is neither null nor an object")
    return _Bundle(
        payload_type=_get(envelope, "payloadType", str, "dsseEnvelope."),
        payload=_get_b64(envelope, "payload", "dsseEnvelope."),
        signatures=parsed_signatures,
        keyid=_get(public, "keyid", str, "publicKey."),
        public_key=public_key,
        cosignature=None if cosignature is None else _parse_cosignature(cosignature),
        log_index=log_index,
        body=_get_b64(entry, "canonicalizedBody", "tlogEntry."),
        tree_size=tree_size,
        root=_get_b64(proof, "rootHash", "tlogEntry.inclusionProof."),
        hashes=[_decode_b64(h, f"tlogEntry.inclusionProof.hashes[{i}]") for i, h in enumerate(hashes)],
        checkpoint=_get(proof, "checkpoint", str, "tlogEntry.inclusionProof."),
        log_key=_get(bundle, "logKey", str, ""),
    )


def _parse_cosignature(cosignature: dict) -> _Cosignature:
    where = "passkeyCosignature."
    user_handle = cosignature.get("userHandle")
    if user_handle is not None:
        _get_b64(cosignature, "userHandle", where, urlsafe=True)
    rp_id = _get(cosignature, "rpId", str, where)
    if not rp_id:
        raise ValueError(f"{where}rpId is empty")
    return _Cosignature(
        credential_id=_get_b64(cosignature, "credentialId", where, urlsafe=True),
        public_key=_get_b64(cosignature, "publicKey", where),
        authenticator_data=_get_b64(cosignature, "authenticatorData", where),
        client_data_json=_get_b64(cosignature, "clientDataJSON", where),
        signature=_get_b64(cosignature, "signature", where),
        rp_id=rp_id,
        origin=_get(cosignature, "origin", str, where),
    )


def _strict_json(data: bytes, what: str) -> object:
    """JSON that means one thing to every parser: UTF-8, no repeated keys, no NaN."""

    def no_repeats(pairs: list[tuple[str, object]]) -> dict:
        keys = [key for key, _ in pairs]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{what} repeats a key")
        return dict(pairs)

    def no_constants(name: str) -> object:
        raise ValueError(f"{what} holds {name}, which is not JSON")

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{what} is not UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=no_repeats, parse_constant=no_constants)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} is not JSON: {exc}") from None


def _is_sha256_hex(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _pinned_key_id(pin: str) -> str:
    """The key ID of a pin given as a 64-hex key ID or a base64 Ed25519 key."""
    pin = pin.strip()
    if len(pin) == 64 and all(c in "0123456789abcdefABCDEF" for c in pin):
        return pin.lower()
    try:
        raw = _strict_b64(pin)
    except (ValueError, UnicodeEncodeError):
        raw = b""
    if len(raw) != 32:
        raise ValueError("the pinned operator key is neither a 64-hex key ID nor a base64 Ed25519 key")
    return key_id(raw)


def _check_operator_key(parsed: _Bundle, operator_key: str | None) -> str:
    computed = key_id(parsed.public_key)
    if parsed.keyid != computed:
        raise ValueError(f"publicKey.keyid {parsed.keyid} is not the SHA-256 of its key ({computed})")
    if not any(keyid == computed for keyid, _ in parsed.signatures):
        raise ValueError(f"no envelope signature names key {computed}")
    if operator_key is not None:
        pinned = _pinned_key_id(operator_key)
        if pinned != computed:
            raise ValueError(f"the bundle is signed by key {computed}, not by the pinned key {pinned}")
        return f"ed25519 key {computed} (pinned)"
    return f"ed25519 key {computed} (unpinned: compare with the published keys)"


def _check_signature(parsed: _Bundle) -> str:
    if parsed.payload_type != DSSE_PAYLOAD_TYPE:
        raise ValueError(f"payloadType is {parsed.payload_type!r}, not {DSSE_PAYLOAD_TYPE}")
    signed = pae(parsed.payload_type, parsed.payload)
    mine = [sig for keyid, sig in parsed.signatures if keyid == parsed.keyid]
    for sig in mine:
        if not verify_ed25519(parsed.public_key, signed, sig):
            raise ValueError(f"the Ed25519 signature by key {parsed.keyid[:16]}… does not verify")
    others = len(parsed.signatures) - len(mine)
    detail = f"ed25519 key {parsed.keyid[:16]}… signed the in-toto statement"
    return detail + (f" ({others} signature(s) by other keys not checked)" if others else "")


def _check_statement(parsed: _Bundle) -> dict:
    statement = _strict_json(parsed.payload, "the DSSE payload")
    if not isinstance(statement, dict):
        raise ValueError("the statement is not a JSON object")
    if statement.get("_type") != STATEMENT_TYPE:
        raise ValueError(f"_type is {statement.get('_type')!r}, not {STATEMENT_TYPE}")
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise ValueError(f"predicateType is {statement.get('predicateType')!r}, not {PREDICATE_TYPE}")
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or len(subjects) != 1 or not isinstance(subjects[0], dict):
        raise ValueError("the statement does not name exactly one subject")
    subject = subjects[0]
    digest = subject.get("digest")
    if not isinstance(subject.get("name"), str) or not subject["name"]:
        raise ValueError("the subject has no name")
    if not isinstance(digest, dict) or not _is_sha256_hex(digest.get("sha256")):
        raise ValueError("the subject has no lowercase hex sha256 digest")
    predicate = statement.get("predicate")
    if not isinstance(predicate, dict):
        raise ValueError("the predicate is not an object")
    required = {
        "evidence": {"size": int, "sha256": str, "location": str},
        "operator": {"handle": str, "keyid": str},
        "case": {"reference": str, "reason": str},
    }
    for section, fields in required.items():
        part = predicate.get(section)
        if not isinstance(part, dict):
            raise ValueError(f"predicate.{section} is missing")
        for name, kind in fields.items():
            value = part.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"predicate.{section}.{name} is missing or not a {kind.__name__}")
    if predicate["evidence"]["size"] < 0:
        raise ValueError("predicate.evidence.size is negative")
    if predicate["operator"]["keyid"] != parsed.keyid:
        raise ValueError(
            f"predicate.operator.keyid {predicate['operator']['keyid']} is not the signing key {parsed.keyid}"
        )
    return statement


DUMP_READ_SIZE = 1 << 20


def _check_subject(statement: dict, dump_path: str | os.PathLike | None) -> str | None:
    """What hashing the dump found, or None when there is no dump to hash."""
    subject = statement["subject"][0]
    evidence = statement["predicate"]["evidence"]
    digest = subject["digest"]["sha256"]
    if evidence["sha256"] != digest:
        raise ValueError(f"predicate.evidence.sha256 {evidence['sha256']} is not the subject's {digest}")
    if dump_path is None:
        return None
    hasher, size = hashlib.sha256(), 0
    try:
        with open(dump_path, "rb") as dump:
            while chunk := dump.read(DUMP_READ_SIZE):
                hasher.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise ValueError(f"cannot read the dump file: {exc}") from None
    if hasher.hexdigest() != digest:
        raise ValueError(f"{os.fspath(dump_path)} has sha256 {hasher.hexdigest()}, the statement {digest}")
    if size != evidence["size"]:
        raise ValueError(f"{os.fspath(dump_path)} is {size} bytes, the statement says {evidence['size']}")
    return f"{os.fspath(dump_path)}: {size} bytes, sha256 {digest}"


ATTESTATION_KIND = "forensics.attestation"


def _check_log_entry(parsed: _Bundle, statement: dict) -> str:
    leaf = _strict_json(parsed.body, "the log entry")
    if not isinstance(leaf, dict) or not isinstance(leaf.get("payload"), dict):
        raise ValueError("the log entry is not an object with a payload")
    if leaf.get("kind") != ATTESTATION_KIND:
        raise ValueError(f"the log entry is a {leaf.get('kind')!r}, not a {ATTESTATION_KIND}")
    payload = leaf["payload"]
    digest = statement["subject"][0]["digest"]["sha256"]
    if payload.get("subject_sha256") != digest:
        raise ValueError(f"the log entry records subject {payload.get('subject_sha256')!r}, not {digest}")
    payload_digest = hashlib.sha256(parsed.payload).hexdigest()
    if payload.get("payload_sha256") != payload_digest:
        raise ValueError(f"the log entry records payload {payload.get('payload_sha256')!r}, not {payload_digest}")
    return f"{leaf.get('subject')} recorded {leaf.get('recorded_at')} by {leaf.get('actor')}"


def _check_checkpoint(parsed: _Bundle, log_key: str | None) -> str:
    name, key_hash, public_key = parse_vkey(parsed.log_key)
    if log_key is not None and parse_vkey(log_key) != (name, key_hash, public_key):
        raise ValueError(f"the bundle's log key {parsed.log_key} is not the pinned one {log_key.strip()}")
    origin, size, root = parse_checkpoint(verify_note(parsed.checkpoint, parsed.log_key))
    if origin != name:
        raise ValueError(f"the checkpoint's origin {origin!r} is not the log key's name {name!r}")
    if size != parsed.tree_size:
        raise ValueError(f"the checkpoint signs a tree of {size}, the proof is for {parsed.tree_size}")
    if root != parsed.root:
        raise ValueError("the checkpoint signs another root than the proof reaches")
    pinned = "pinned" if log_key is not None else "unpinned: compare with the published log key"
    return f"signed by {name}+{key_hash.hex()} ({pinned}), tree size {size}"


# Authenticator data flags (WebAuthn section 6.1).
FLAG_USER_PRESENT = 0x01
FLAG_USER_VERIFIED = 0x04


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _check_cosignature(parsed: _Bundle, cosignature: _Cosignature, report: Report) -> str:
    algorithm, verify = cose_verifier(cosignature.public_key)
    client_data = _strict_json(cosignature.client_data_json, "clientDataJSON")
    if not isinstance(client_data, dict):
        raise ValueError("clientDataJSON is not an object")
    if client_data.get("type") != "webauthn.get":
        raise ValueError(f"clientDataJSON.type is {client_data.get('type')!r}, not webauthn.get")
    challenge = _b64url(hashlib.sha256(pae(parsed.payload_type, parsed.payload)).digest())
    if client_data.get("challenge") != challenge:
        raise ValueError("the passkey signed another challenge than SHA-256 of this envelope's PAE")
    if client_data.get("origin") != cosignature.origin:
        raise ValueError(f"the passkey signed for origin {client_data.get('origin')!r}, not {cosignature.origin!r}")
    host = urlsplit(cosignature.origin).hostname or ""
    if not (host == cosignature.rp_id or host.endswith("." + cosignature.rp_id)):
        raise ValueError(f"origin {cosignature.origin} is not within the relying party {cosignature.rp_id}")
    data = cosignature.authenticator_data
    if len(data) < 37:
        raise ValueError("authenticatorData is shorter than 37 bytes")
    if data[:32] != hashlib.sha256(cosignature.rp_id.encode("utf-8")).digest():
        raise ValueError(f"authenticatorData is for another relying party than {cosignature.rp_id}")
    if not data[32] & FLAG_USER_PRESENT:
        raise ValueError("the authenticator did not see the user present")
    if not verify(data + hashlib.sha256(cosignature.client_data_json).digest(), cosignature.signature):
        raise ValueError(f"the {algorithm} passkey signature does not verify")
    report.user_verified = bool(data[32] & FLAG_USER_VERIFIED)
    verified = "user verified" if report.user_verified else "user present, NOT verified"
    credential = _b64url(cosignature.credential_id)[:16]
    return f"{algorithm} credential {credential}…, {verified}, rp {cosignature.rp_id}, origin {cosignature.origin}"


def verify_bundle(bundle: dict, dump_path: str | os.PathLike | None = None, *, log_key: str | None = None,
                  operator_key: str | None = None) -> Report:
    """Check everything an evidence bundle claims, in order, and raise
    VerificationFailed naming the first check that fails."""
    report = Report(operator_key_pinned=operator_key is not None, log_key_pinned=log_key is not None)
    try:
        _verify(bundle, dump_path, log_key, operator_key, report)
    except VerificationFailed as failed:
        failed.report = report
        raise
    report.verified = True
    return report


def _verify(bundle: dict, dump_path: str | os.PathLike | None, log_key: str | None, operator_key: str | None,
            report: Report) -> None:
    with _checking("bundle"):
        parsed = _parse_bundle(bundle)
    report.checks.append(("bundle", f"{BUNDLE_MEDIA_TYPE}, log entry {parsed.log_index}"))
    report.keyid, report.log_key = key_id(parsed.public_key), parsed.log_key.strip()
    with _checking("operator key"):
        report.checks.append(("operator key", _check_operator_key(parsed, operator_key)))
    with _checking("signature"):
        report.checks.append(("signature", _check_signature(parsed)))
    with _checking("statement"):
        statement = _check_statement(parsed)
    subject, predicate = statement["subject"][0], statement["predicate"]
    report.subject_name, report.subject_sha256 = subject["name"], subject["digest"]["sha256"]
    case, handle = predicate["case"]["reference"], predicate["operator"]["handle"]
    stated = f"{subject['name']} sha256 {report.subject_sha256}, case {case}, operator {handle}"
    report.checks.append(("statement", stated))
    with _checking("subject digest"):
        hashed = _check_subject(statement, dump_path)
    if hashed is None:
        report.skipped.append(("subject digest", "no dump file given; only the statement's own digests agree"))
    else:
        report.checks.append(("subject digest", hashed))
    with _checking("log entry binding"):
        report.checks.append(("log entry binding", _check_log_entry(parsed, statement)))
    with _checking("inclusion proof"):
        verify_inclusion(leaf=leaf_hash(parsed.body), index=parsed.log_index, size=parsed.tree_size,
                         proof=parsed.hashes, root=parsed.root)
    report.log_index, report.tree_size = parsed.log_index, parsed.tree_size
    proved = f"entry {parsed.log_index} of {parsed.tree_size}, root {parsed.root.hex()}"
    report.checks.append(("inclusion proof", proved))
    with _checking("checkpoint"):
        report.checks.append(("checkpoint", _check_checkpoint(parsed, log_key)))
    if parsed.cosignature is None:
        report.skipped.append(("passkey co-signature", "the bundle carries none"))
        return
    with _checking("passkey co-signature"):
        report.checks.append(("passkey co-signature", _check_cosignature(parsed, parsed.cosignature, report)))
    report.cosigned = True


# --- the command line -------------------------------------------------------------------

def load_bundle(path: str | os.PathLike) -> dict:
    try:
        with open(path, "rb") as file:
            return json.loads(file.read())
    except (OSError, ValueError) as exc:
        raise VerificationFailed("bundle", f"cannot read {os.fspath(path)} as JSON: {exc}") from None


def verify_file(bundle_path: str | os.PathLike, dump_path: str | os.PathLike | None = None, *,
                log_key: str | None = None, operator_key: str | None = None) -> Report:
    return verify_bundle(load_bundle(bundle_path), dump_path, log_key=log_key, operator_key=operator_key)


def outcome_lines(report: Report) -> list[str]:
    """What a person reads: a line per check, then what the result rests on."""
    lines = [f"ok   {name}: {detail}" for name, detail in report.checks]
    lines += [f"skip {name}: {detail}" for name, detail in report.skipped]
    if not report.verified:
        return lines
    lines.append(
        f"VERIFIED {report.subject_name} (sha256 {report.subject_sha256}) is entry {report.log_index}"
        f" of the log at size {report.tree_size}" + (", co-signed with a passkey" if report.cosigned else "")
        + ("; the dump file itself was not checked" if "subject digest" in dict(report.skipped) else "")
    )
    unpinned = []
    if not report.operator_key_pinned:
        unpinned.append(f"  operator key id: {report.keyid}")
    if not report.log_key_pinned:
        unpinned.append(f"  log key: {report.log_key}")
    if unpinned:
        lines.append("UNPINNED: these keys came with the bundle; compare them with the published ones"
                     " (or pass --operator-key and --log-key):")
        lines += unpinned
    else:
        lines.append("pinned: the operator key and the log key are the ones you gave")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="offline_verify.py", description="Verify an InfraSim evidence bundle.")
    parser.add_argument("bundle", help="the evidence bundle (JSON)")
    parser.add_argument("dump", nargs="?", help="the memory dump the bundle attests")
    parser.add_argument("--log-key", help="the transparency log's published verifier key (name+hash+key)")
    parser.add_argument("--operator-key", help="the operator's published key ID (hex) or Ed25519 key (base64)")
    args = parser.parse_args(argv)
    try:
        report = verify_file(args.bundle, args.dump, log_key=args.log_key, operator_key=args.operator_key)
    except VerificationFailed as failed:
        for line in outcome_lines(failed.report):
            print(line)
        print(f"FAILED {failed.check}: {failed.message}", file=sys.stderr)
        return 1
    for line in outcome_lines(report):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
