"""Browser fixtures: Debian's Chromium driven by Playwright, with a DevTools
virtual authenticator standing in for the platform passkey provider.

Playwright's sync API keeps its asyncio loop marked as running on the main
thread for as long as Playwright is started, which makes Django refuse ORM
calls there (SynchronousOnlyOperation). So Playwright lives only for one test
(it is stopped before the transactional database is flushed), and tests read
the database inside `orm_access()`, which lifts the guard for that block only.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import pytest
from playwright.sync_api import CDPSession, Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# A platform authenticator with a biometric: discoverable credentials and
# user verification, the user always present and always verified.
PLATFORM_AUTHENTICATOR = {
    "protocol": "ctap2",
    "transport": "internal",
    "hasResidentKey": True,
    "hasUserVerification": True,
    "isUserVerified": True,
    "automaticPresenceSimulation": True,
}


@contextlib.contextmanager
def orm_access():
    """Allow Django ORM calls on the main thread while Playwright runs."""
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@dataclass
class Browser:
    page: Page
    cdp: CDPSession
    authenticator_id: str
    base_url: str

    def url(self, path: str) -> str:
        return self.base_url + path

    def credentials(self) -> list[dict]:
        return self.cdp.send("WebAuthn.getCredentials", {"authenticatorId": self.authenticator_id})["credentials"]


def _browser(live, authenticator_options: dict):
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = chromium.new_context(base_url=live.url)
            context.set_default_timeout(10_000)
            page = context.new_page()
            cdp = context.new_cdp_session(page)
            cdp.send("WebAuthn.enable", {"enableUI": False})
            authenticator_id = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": authenticator_options})[
                "authenticatorId"
            ]
            yield Browser(page=page, cdp=cdp, authenticator_id=authenticator_id, base_url=live.url)
        finally:
            chromium.close()


@pytest.fixture()
def browser(live):
    """A fresh Chromium with a passkey-capable platform authenticator."""
    yield from _browser(live, PLATFORM_AUTHENTICATOR)


@pytest.fixture()
def browser_without_uv(live):
    """A fresh Chromium whose only authenticator cannot verify the user
    (a security key with no PIN or biometric)."""
    yield from _browser(live, {**PLATFORM_AUTHENTICATOR, "hasUserVerification": False, "isUserVerified": False})
