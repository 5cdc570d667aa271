"""Every HTML page carries a Content-Security-Policy that allows no third-party
or inline script, and the pages themselves need none."""

from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.test import Client

from tests.passkey_api import authenticator, sign_up

EXECUTABLE_SCRIPT_TYPES = {"", "text/javascript", "application/javascript", "module"}


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.scripts: list[dict] = []
        self.inline_code: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self.scripts.append(attrs)
        if tag == "style":
            self.inline_code.append("<style> element")
        for name in attrs:
            if name.startswith("on") or name == "style":
                self.inline_code.append(f"<{tag} {name}=...>")


def _parse(response) -> _Page:
    page = _Page()
    page.feed(response.content.decode())
    return page


def _policy(response) -> dict[str, str]:
    directives = [d.strip() for d in response["Content-Security-Policy"].split(";")]
    return {d.split(" ", 1)[0]: d.split(" ", 1)[1] if " " in d else "" for d in directives if d}


def _same_origin(src: str) -> bool:
    parts = urlsplit(src)
    if not parts.scheme and not parts.netloc:
        return src.startswith("/") or not src.startswith("//")
    return f"{parts.scheme}://{parts.netloc}" == settings.WEBAUTHN_RP_ORIGIN


def _assert_only_same_origin_scripts(response):
    for script in _parse(response).scripts:
        if script.get("type", "").lower() in EXECUTABLE_SCRIPT_TYPES:
            assert script.get("src"), f"inline script on {response.wsgi_request.path}"
            assert _same_origin(script["src"]), script["src"]


@pytest.fixture()
def signed_in(db):
    client = Client()
    sign_up(client, authenticator())
    return client


def test_console_pages_carry_a_policy_that_allows_only_our_own_scripts(signed_in):
    response = signed_in.get("/")
    assert response.status_code == 200
    policy = _policy(response)
    ws_origin = settings.WEBAUTHN_RP_ORIGIN.replace("http://", "ws://", 1)
    assert policy == {
        "default-src": "'self'",
        "script-src": "'self'",
        "style-src": "'self'",
        "img-src": "'self' data:",
        "connect-src": f"'self' {ws_origin}",
        "frame-ancestors": "'none'",
        "base-uri": "'self'",
        "form-action": "'self'",
        "object-src": "'none'",
    }


@pytest.mark.parametrize("path", ["/", "/passkeys/", "/tokens/"])
def test_signed_in_console_pages_have_no_inline_script_or_style(signed_in, path):
    response = signed_in.get(path)
    assert response.status_code == 200
    assert "Content-Security-Policy" in response
    page = _parse(response)
    assert page.inline_code == []
    _assert_only_same_origin_scripts(response)
    assert page.scripts, "the console's own scripts are loaded"


@pytest.mark.parametrize("path", ["/signin/", "/signup/"])
def test_public_pages_have_no_inline_script_or_style(db, path):
    response = Client().get(path)
    assert response.status_code == 200
    assert "Content-Security-Policy" in response
    assert _parse(response).inline_code == []
    _assert_only_same_origin_scripts(response)


def test_the_browsable_api_carries_the_policy_and_loads_only_same_origin_scripts(signed_in):
    response = signed_in.get("/api/", HTTP_ACCEPT="text/html")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert _policy(response)["script-src"] == "'self'"
    assert "'unsafe-inline'" not in response["Content-Security-Policy"]
    _assert_only_same_origin_scripts(response)


def test_the_api_docs_carry_the_policy_and_load_only_same_origin_scripts(signed_in):
    response = signed_in.get("/api/docs/", follow=True)
    assert response.status_code == 200
    assert _policy(response)["script-src"] == "'self'"
    _assert_only_same_origin_scripts(response)


def test_json_api_responses_are_not_given_a_page_policy(signed_in):
    response = signed_in.get("/api/meshnet/me")
    assert response.status_code == 200
    assert "Content-Security-Policy" not in response
