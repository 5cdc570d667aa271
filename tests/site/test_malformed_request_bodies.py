"""Malformed, oversized and too-deep JSON bodies get a JSON 4xx from every API
endpoint, signed in or not, and nothing is logged as an error."""

import logging

import pytest
from django.test import Client

from tests.passkey_api import API, authenticator, sign_up

PUBLIC = [f"{API}/auth/register/options", f"{API}/auth/login/verify"]
SIGNED_IN_ONLY = [f"{API}/tokens", f"{API}/mesh/peers"]

DEEP = "[" * 1000 + "]" * 1000
BODIES = {
    "deeply nested": DEEP,
    "deeply nested, unclosed": "[" * 100_000,
    "nested objects": '{"a":' * 1000 + "1" + "}" * 1000,
    "not json": "{'display_name': 'x'",
    "truncated": '{"display_name": "Al',
    "NaN": '{"display_name": NaN}',
    "not utf-8": b'{"display_name": "\xff\xfe"}',
}
TWENTY_MB = "[" + "0," * (10 * 1024 * 1024 - 1) + "0]"


def _assert_json_error(response, status, caplog):
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"].startswith("application/json")
    assert "detail" in response.json()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def _post(client, path, body):
    return client.post(path, body, content_type="application/json")


@pytest.fixture()
def signed_in(db):
    client = Client()
    sign_up(client, authenticator())
    return client


@pytest.mark.parametrize("path", PUBLIC)
@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
def test_public_endpoints_answer_bad_json_with_a_json_400(db, caplog, path, body):
    _assert_json_error(_post(Client(), path, body), 400, caplog)


@pytest.mark.parametrize("path", SIGNED_IN_ONLY)
@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
def test_signed_in_endpoints_answer_bad_json_with_a_json_400(signed_in, caplog, path, body):
    _assert_json_error(_post(signed_in, path, body), 400, caplog)


@pytest.mark.parametrize("path", SIGNED_IN_ONLY)
def test_anonymous_deep_json_to_a_signed_in_endpoint_is_refused_in_json(db, caplog, path):
    response = _post(Client(), path, DEEP)
    assert response.status_code in (401, 403)
    _assert_json_error(response, response.status_code, caplog)


@pytest.mark.parametrize("path", PUBLIC + SIGNED_IN_ONLY)
def test_a_20_mb_body_is_a_json_413_for_anonymous_clients(db, caplog, path):
    _assert_json_error(_post(Client(), path, TWENTY_MB), 413, caplog)


@pytest.mark.parametrize("path", SIGNED_IN_ONLY)
def test_a_20_mb_body_is_a_json_413_when_signed_in(signed_in, caplog, path):
    _assert_json_error(_post(signed_in, path, TWENTY_MB), 413, caplog)


def test_json_nested_to_the_limit_still_reaches_the_serializer(signed_in):
    nested = "[" * 63 + "]" * 63
    response = _post(signed_in, f"{API}/tokens", '{"name": ' + nested + "}")
    assert response.status_code == 400
    assert "name" in response.json()
