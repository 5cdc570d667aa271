"""The API's front doors: /api/ lists every endpoint family and leads back
to the console, and /api/docs/ works with no CDN and no inline script."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from django.test import Client

from identity.models import User
from mesh import services as mesh_services
from tests.passkey_api import authenticator, sign_up

FAMILIES = {"me", "identity", "availability", "passkeys", "tokens", "mesh-peers", "mesh-networks", "schema", "docs", "console"}


class Resources(HTMLParser):
    """Every script, stylesheet, icon and inline block of a page."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self.inline: list[str] = []
        self._open: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            if attrs.get("src"):
                self.urls.append(attrs["src"])
            else:
                self._open = "script"
        elif tag == "link" and attrs.get("href"):
            self.urls.append(attrs["href"])
        elif tag == "style":
            self._open = "style"

    def handle_endtag(self, tag):
        if tag == self._open:
            self._open = None

    def handle_data(self, data):
        if self._open and data.strip():
            self.inline.append(f"<{self._open}> {data.strip()[:80]}")


def signed_in(name: str, *, operator: bool = False) -> Client:
    client = Client()
    sign_up(client, authenticator(), name)
    if operator:
        User.objects.filter(display_name=name).update(is_staff=True)
    return client


@pytest.mark.django_db
def test_the_api_root_lists_every_endpoint_family_and_each_link_answers():
    client = signed_in("Rooted Rita")
    links = client.get("/api/").json()
    assert set(links) == FAMILIES
    for name, url in links.items():
        response = client.get(url)
        if name == "availability":
            # It needs ?handle=, and says so naming the field.
            assert response.status_code == 400 and "handle" in response.json(), response.content
        elif name == "identity":
            # Claiming a handle is a POST; the browsable page offers its form.
            assert response.status_code == 405 and "POST" in response["Allow"]
        else:
            assert response.status_code == 200, (name, url, response.status_code)
    assert urlsplit(links["console"]).path == "/"


@pytest.mark.django_db
def test_operators_also_find_the_gateway_config_in_the_api_root():
    client = signed_in("Ops Otto", operator=True)
    mesh_services.network_ensure_default()
    links = client.get("/api/").json()
    assert set(links) == FAMILIES | {"mesh-gateway-config"}
    response = client.get(links["mesh-gateway-config"])
    assert response.status_code == 200, response.content
    assert "[Interface]" in response.content.decode()


@pytest.mark.django_db
def test_the_browsable_api_links_back_to_the_console_and_the_docs():
    client = signed_in("Browsing Bea")
    page = client.get("/api/meshnet/me", HTTP_ACCEPT="text/html").content.decode()
    assert 'href="/"' in page
    assert 'href="/api/docs/"' in page
    assert "Django REST framework" not in page


@pytest.mark.django_db
def test_the_api_docs_load_only_files_from_this_server_and_no_inline_script():
    client = signed_in("Docs Dora")
    response = client.get("/api/docs/")
    assert response.status_code == 200
    page = Resources()
    page.feed(response.content.decode())
    assert page.inline == []
    assert len(page.urls) >= 4  # Swagger UI's CSS and two bundles, the start-up script
    for url in page.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, f"{url} is not served from this origin"
        fetched = client.get(url if parts.path else f"/api/docs/{url}")
        assert fetched.status_code == 200, url
    start_up = client.get("/api/docs/", {"script": ""})
    assert start_up["Content-Type"].startswith("application/javascript")
    assert "/api/schema/" in start_up.content.decode()


@pytest.mark.django_db
def test_the_api_docs_are_for_signed_in_people():
    assert Client().get("/api/docs/").status_code in {401, 403}
