"""WireGuard keys: Curve25519 (x25519) via libsodium, base64 as `wg` writes them."""

from __future__ import annotations

import base64
import binascii

from nacl.bindings import crypto_scalarmult_base
from nacl.utils import random as random_bytes

KEY_BYTES = 32


class InvalidKey(ValueError):
    pass


def _clamp(secret: bytearray) -> bytes:
    # The same clamping `wg genkey` applies (RFC 7748 section 5).
    secret[0] &= 248
    secret[31] = (secret[31] & 127) | 64
    return bytes(secret)


def generate_private_key() -> str:
    return base64.b64encode(_clamp(bytearray(random_bytes(KEY_BYTES)))).decode()


def public_key(private_key: str) -> str:
    raw = decode_key(private_key)
    return base64.b64encode(crypto_scalarmult_base(_clamp(bytearray(raw)))).decode()


def generate_keypair() -> tuple[str, str]:
    private = generate_private_key()
    return private, public_key(private)


def generate_preshared_key() -> str:
    return base64.b64encode(random_bytes(KEY_BYTES)).decode()


def decode_key(text: str) -> bytes:
    if not isinstance(text, str) or len(text) != 44 or not text.endswith("="):
        raise InvalidKey("A WireGuard key is 44 characters of base64 ending in '='.")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKey("Not valid base64.") from None
    if len(raw) != KEY_BYTES:
        raise InvalidKey("A WireGuard key decodes to 32 bytes.")
    return raw


P = 2**255 - 19
# The u-coordinates of the points of small order on Curve25519 (libsodium's
# `has_small_order` list, RFC 7748 section 7): 0 and p-1 (orders 4 and 2), 1
# (the identity), and the two points of order 8. Any key times one of them is
# one of them, so a peer with such a "public key" shares a secret everybody
# can compute.
SMALL_ORDER_U = frozenset({
    0,
    1,
    P - 1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
})


def is_small_order(raw: bytes) -> bool:
    # As X25519 reads a u-coordinate: the top bit ignored, then modulo p, so
    # every encoding of these points (u + p, top bit set) is caught too.
    u = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    return u % P in SMALL_ORDER_U


def normalize_public_key(text: str) -> str:
    raw = decode_key(text.strip() if isinstance(text, str) else text)
    if is_small_order(raw):
        raise InvalidKey("This is a low-order point of Curve25519, not a usable public key.")
    return base64.b64encode(raw).decode()
