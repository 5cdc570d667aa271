"""Fuzzing the passkey ceremonies with a pending challenge."""

from __future__ import annotations

import json

import cbor2
import pytest
from django.conf import settings
from django.test import Client
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.passkey_api import API, authenticator, post_json, register_options, sign_up
from tests.webauthn_authenticator import b64url

pytestmark = pytest.mark.django_db


from tests.passkey_api import assert_signed_out


# --- Fuzzing the ceremonies with a pending challenge ----------------------------------------
#
# Schemathesis cannot reach the verification code: its requests carry no
# session with a pending challenge. These do, and then send a genuine response
# with one part replaced by junk, or by well-formed CBOR / JSON of the wrong shape.

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)
cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12) | st.binary(max_size=80),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.integers(-3, 3) | st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)
b64_junk = st.one_of(
    st.binary(max_size=300).map(b64url),
    json_values.map(lambda v: b64url(json.dumps(v).encode())),
    cbor_values.map(lambda v: b64url(cbor2.dumps(v))),
    st.fixed_dictionaries(
        {"fmt": st.sampled_from(["none", "packed", "fido-u2f", "tpm", "apple", "x"]), "attStmt": cbor_values,
         "authData": st.binary(max_size=200)}
    ).map(lambda v: b64url(cbor2.dumps(v))),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["webauthn.create", "webauthn.get"]) | st.text(max_size=5),
         "challenge": st.text(max_size=20) | st.none() | st.integers(),
         "origin": st.sampled_from([settings.WEBAUTHN_RP_ORIGIN]) | st.text(max_size=10) | st.none(),
         "crossOrigin": st.booleans() | st.none(), "tokenBinding": json_values}
    ).map(lambda v: b64url(json.dumps(v).encode())),
)
junk = st.one_of(b64_junk, json_values, st.text(max_size=40))

FUZZ_CEREMONY = hypothesis_settings(
    max_examples=60, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _replace(data: dict, path: tuple[str, ...], value):
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


REGISTRATION_PATHS = [
    ("id",), ("rawId",), ("type",), ("authenticatorAttachment",), ("clientExtensionResults",),
    ("clientExtensionResults", "credProps"), ("clientExtensionResults", "credProps", "rk"),
    ("response", "clientDataJSON"), ("response", "attestationObject"), ("response", "transports"), ("response",),
]
ASSERTION_PATHS = [
    ("id",), ("rawId",), ("type",), ("authenticatorAttachment",),
    ("response", "clientDataJSON"), ("response", "authenticatorData"), ("response", "signature"),
    ("response", "userHandle"), ("response",),
]


@FUZZ_CEREMONY
@given(path=st.sampled_from(REGISTRATION_PATHS), value=junk)
def test_junk_in_a_registration_response_is_never_a_server_error(path, value):
    client, device = Client(), authenticator()
    credential = device.create(register_options(client, display_name="Fuzz"))
    _replace(credential, path, value)
    response = post_json(client, f"{API}/auth/register/verify", credential)
    assert response.status_code < 500
    if response.status_code != 201:
        assert_signed_out(client)


@FUZZ_CEREMONY
@given(path=st.sampled_from(ASSERTION_PATHS), value=junk)
def test_junk_in_an_assertion_is_never_a_server_error(path, value):
    device = authenticator()
    sign_up(Client(), device)
    client = Client()
    assertion = device.get(post_json(client, f"{API}/auth/login/options").json())
    _replace(assertion, path, value)
    response = post_json(client, f"{API}/auth/login/verify", assertion)
    assert response.status_code < 500
    if response.status_code != 200:
        assert_signed_out(client)
