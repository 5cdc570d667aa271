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


def normalize_public_key(text: str) -> str:
    raw = decode_key(text.strip() if isinstance(text, str) else text)
    if raw == bytes(KEY_BYTES):
        raise InvalidKey("The all-zero key is not a public key.")
    return base64.b64encode(raw).decode()
