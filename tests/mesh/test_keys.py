"""Public keys: the points of small order on Curve25519 are refused."""

import base64
import os

import pytest
from nacl.bindings import crypto_scalarmult

from mesh import keys

P = 2**255 - 19
ORDER_8 = [
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
]
# Every small-order u and its other encodings: + p where that still fits in 255 bits, and the top bit set.
SMALL = [0, 1, P - 1, *ORDER_8]
ENCODINGS = SMALL + [u + P for u in SMALL if u + P < 2**255] + [u | (1 << 255) for u in SMALL]


def encode(u: int) -> str:
    return base64.b64encode(u.to_bytes(32, "little")).decode()


@pytest.mark.parametrize("u", ENCODINGS)
def test_a_small_order_point_is_not_accepted_as_a_public_key(u):
    with pytest.raises(keys.InvalidKey, match="low-order"):
        keys.normalize_public_key(encode(u))


@pytest.mark.parametrize("u", ENCODINGS)
def test_libsodium_agrees_that_the_refused_keys_give_no_shared_secret(u):
    private = base64.b64decode(keys.generate_private_key())
    with pytest.raises(RuntimeError):
        crypto_scalarmult(private, u.to_bytes(32, "little"))


def test_real_public_keys_are_still_accepted():
    for _ in range(50):
        _, public = keys.generate_keypair()
        assert keys.normalize_public_key(public) == public
    assert keys.normalize_public_key(encode(9)) == encode(9)  # the base point
    random_u = int.from_bytes(os.urandom(32), "little") & ((1 << 255) - 1)
    assert keys.normalize_public_key(encode(random_u)) == encode(random_u)


def test_the_api_refuses_a_low_order_key_naming_public_key(db):
    from tests.people import client_for, person

    response = client_for(person("lowkey")).post(
        "/api/meshnet/mesh/peers", {"name": "x", "public_key": encode(1)}, content_type="application/json"
    )
    assert response.status_code == 400 and "public_key" in response.json()
