"""The OpenAPI schema, the browsable API, and a schemathesis run of the whole
API against the live ASGI server that must never answer 5xx."""

from __future__ import annotations

from collections import Counter

import pytest
import requests
import schemathesis
import yaml
from django.test import Client
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode
from openapi_spec_validator import validate

from tests.passkey_api import API, authenticator, bearer, create_token, post_json, sign_up

# --- The schema and the browsable API ------------------------------------------------------


@pytest.mark.django_db
def test_the_schema_is_valid_openapi_and_lists_the_identity_api():
    client = Client()
    sign_up(client, authenticator())
    response = client.get("/api/schema/", {"format": "json"})
    assert response.status_code == 200, response.content
    schema = response.json()
    validate(schema)
    assert schema["openapi"].startswith("3.")
    paths = schema["paths"]
    for path in (
        "/api/meshnet/auth/register/options",
        "/api/meshnet/auth/register/verify",
        "/api/meshnet/auth/login/options",
        "/api/meshnet/auth/login/verify",
        "/api/meshnet/auth/logout",
        "/api/meshnet/me",
        "/api/meshnet/identity",
        "/api/meshnet/identity/provision",
        "/api/meshnet/passkeys",
        "/api/meshnet/passkeys/{id}",
        "/api/meshnet/tokens",
        "/api/meshnet/tokens/{id}",
        "/api/forensics/acquisitions",
        "/api/forensics/acquisitions/{id}",
        "/api/forensics/acquisitions/{id}/evidence",
        "/api/forensics/acquisitions/{id}/bundle",
        "/api/forensics/log/checkpoint",
        "/api/forensics/log/key",
        "/api/forensics/log/proof/inclusion",
        "/api/forensics/log/proof/consistency",
    ):
        assert path in paths, path
    # Object ids are integers, and the bearer tokens are documented.
    [id_param] = [p for p in paths["/api/meshnet/tokens/{id}"]["get"]["parameters"] if p["name"] == "id"]
    assert id_param["schema"]["type"] == "integer"
    schemes = schema["components"]["securitySchemes"]
    assert any(s.get("scheme") == "bearer" for s in schemes.values())
    # The default (YAML) rendering is the same document.
    default = client.get("/api/schema/")
    assert default.status_code == 200
    assert yaml.safe_load(default.content)["paths"].keys() == paths.keys()


@pytest.mark.django_db
def test_the_schema_is_served_to_a_bearer_token():
    client = Client()
    sign_up(client, authenticator())
    secret = create_token(client)["token"]
    response = Client().get("/api/schema/", {"format": "json"}, **bearer(secret))
    assert response.status_code == 200
    validate(response.json())


@pytest.mark.django_db
def test_the_browsable_api_renders_html_for_a_signed_in_user():
    client = Client()
    sign_up(client, authenticator(), "Browsing Betty")
    for path in (f"{API}/me", f"{API}/passkeys", f"{API}/tokens", "/api/"):
        response = client.get(path, HTTP_ACCEPT="text/html")
        assert response.status_code == 200, (path, response.status_code)
        assert response["Content-Type"].startswith("text/html")
        content = response.content.decode()
        assert "<html" in content.lower()
    assert "Browsing Betty" in client.get(f"{API}/me", HTTP_ACCEPT="text/html").content.decode()
    # JSON stays the default for API clients.
    assert client.get(f"{API}/me").json()["user"]["display_name"] == "Browsing Betty"


# --- Schemathesis against the live server --------------------------------------------------------


@pytest.fixture()
def api_user(live):
    """A user with a passkey, a handle and an API token, committed so that
    the live server sees them."""
    client = Client()
    sign_up(client, authenticator(), "Fuzzy")
    assert post_json(client, f"{API}/identity", {"handle": "fuzzy"}).status_code == 201
    token = create_token(client, "schemathesis")
    return {"token": token["token"], "token_id": token["id"]}


@pytest.fixture()
def api_schema(live, api_user):
    schema = schemathesis.openapi.from_url(
        f"{live.url}/api/schema/?format=json", headers=bearer_header(api_user["token"]), timeout=30
    )
    schema.config.base_url = live.url
    return schema


def bearer_header(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


FUZZ = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    database=None,
    phases=[Phase.explicit, Phase.generate],
)


def fuzz(schema, *, base_url: str, headers: dict | None = None) -> tuple[list[str], Counter]:
    """Run positive and negative cases of every operation of `schema`;
    return a line for each one that answered 5xx, and how often each
    operation answered each status."""
    failures: list[str] = []
    seen: Counter = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @FUZZ
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case):
                response = case.call(base_url=base_url, headers=headers, timeout=30)
                seen[(operation.label, response.status_code)] += 1
                assert response.status_code < 500, (
                    f"{case.method} {case.formatted_path} ({mode}): {response.status_code} "
                    f"query={case.query!r} body={case.body!r}\n{response.text[:1500]}"
                )

            try:
                run()
            except AssertionError as exc:
                failures.append(str(exc))
            except Unsatisfiable:
                # Nothing in this operation can be made invalid (no
                # parameters, no body): there are no negative cases.
                assert mode is GenerationMode.NEGATIVE, operation.label
    return failures, seen


def test_no_operation_answers_5xx_to_a_signed_in_client(api_schema, live, api_user):
    # Revoking the token the run authenticates with would turn every later
    # case into a 401; revocation is covered by tests/identity/test_api_permissions.py.
    schema = api_schema.exclude(method="DELETE", path_regex=r"/tokens/")
    failures, seen = fuzz(schema, base_url=live.url, headers=bearer_header(api_user["token"]))
    print(sorted(seen.items()))
    assert not failures, "\n\n".join(failures)
    # Every operation was reached signed in: none answered only 401.
    for label in {label for label, _ in seen}:
        assert any(status != 401 for (other, status) in seen if other == label), label
    # The token was not revoked along the way, so every case ran signed in.
    assert requests.get(f"{live.url}{API}/me", headers=bearer_header(api_user["token"]), timeout=30).ok


def test_no_auth_operation_answers_5xx_to_an_anonymous_client(api_schema, live):
    # The sign-in ceremonies, and the transparency log's public reads.
    failures, seen = fuzz(api_schema.include(path_regex=r"/auth/|/forensics/log/(checkpoint|key|proof)|/forensics/keys$"),
                          base_url=live.url)
    print(sorted(seen.items()))
    assert not failures, "\n\n".join(failures)


def test_the_fuzzing_token_survived(live, api_user):
    """Sanity check of the set-up the schemathesis tests rely on."""
    response = requests.get(f"{live.url}{API}/me", headers=bearer_header(api_user["token"]), timeout=30)
    assert response.status_code == 200
    assert response.json()["identity"]["handle"] == "fuzzy"
