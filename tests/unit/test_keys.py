"""WireGuard keys: x25519 as `wg` computes it, and the public keys refused."""

import base64

import pytest

from mesh.keys import (
    P,
    InvalidKey,
    decode_key,
    generate_keypair,
    generate_preshared_key,
    normalize_public_key,
    public_key,
)


def b64(hex_text: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_text)).decode()


def b64_u(u: int) -> str:
    return base64.b64encode(u.to_bytes(32, "little")).decode()


def test_public_key_matches_rfc7748_alice():
    alice_private = b64("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    alice_public = b64("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert public_key(alice_private) == alice_public


def test_a_generated_pair_belongs_together_and_is_clamped():
    private, public = generate_keypair()
    assert public_key(private) == public
    raw = decode_key(private)
    assert raw[0] & 7 == 0 and raw[31] & 128 == 0 and raw[31] & 64


def test_preshared_keys_are_fresh_32_byte_keys():
    first, second = generate_preshared_key(), generate_preshared_key()
    assert first != second
    assert len(decode_key(first)) == 32


@pytest.mark.parametrize(
    "text",
    ["", "short=", "A" * 44, "!" * 43 + "=", base64.b64encode(b"\x01" * 31).decode().ljust(44, "=")],
)
def test_malformed_keys_are_refused(text):
    with pytest.raises(InvalidKey):
        decode_key(text)


def test_a_valid_public_key_is_normalised():
    _, public = generate_keypair()
    assert normalize_public_key(f"  {public}\n") == public


SMALL_ORDER = {
    "zero": 0,
    "one": 1,
    "p-1": P - 1,
    "order 8": 325606250916557431795983626356110631294008115727848805560023387167927233504,
    "order 8, other": 39382357235489614581723060781553021112529911719440698176882885853963445705823,
    "zero + p": P,
    "one + p": P + 1,
    "one, top bit set": 1 | (1 << 255),
}


@pytest.mark.parametrize("u", SMALL_ORDER.values(), ids=SMALL_ORDER.keys())
def test_low_order_points_are_not_accepted_as_public_keys(u):
    with pytest.raises(InvalidKey, match="low-order"):
        normalize_public_key(b64_u(u))
