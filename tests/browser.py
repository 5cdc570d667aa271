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


# Records how the page calls navigator.credentials.get (the mediation it asks
# for), in sessionStorage so that the record survives the navigation that
# follows a sign-in. It only watches: the call goes to the browser unchanged.
RECORD_GET_CALLS = """
(() => {
  if (!window.navigator.credentials) return;
  const get = navigator.credentials.get.bind(navigator.credentials);
  navigator.credentials.get = (options) => {
    const calls = JSON.parse(sessionStorage.getItem("e2e-webauthn-get") || "[]");
    calls.push((options && options.mediation) || "optional");
    sessionStorage.setItem("e2e-webauthn-get", JSON.stringify(calls));
    return get(options);
  };
})();
"""


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

    def credentials(self, authenticator_id: str | None = None) -> list[dict]:
        """The passkeys an authenticator holds (the current one by default)."""
        authenticator_id = authenticator_id or self.authenticator_id
        return self.cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator_id})["credentials"]

    def switch_authenticator(self, options: dict | None = None, credentials: list[dict] = ()) -> str:
        """Take the current authenticator away and attach another one (the
        user moves to another device), optionally holding `credentials`."""
        self.cdp.send("WebAuthn.removeVirtualAuthenticator", {"authenticatorId": self.authenticator_id})
        self.authenticator_id = _add_authenticator(self.cdp, options or PLATFORM_AUTHENTICATOR)
        for credential in credentials:
            self.cdp.send("WebAuthn.addCredential", {"authenticatorId": self.authenticator_id, "credential": credential})
        return self.authenticator_id

    def get_calls(self) -> list[str]:
        """The mediation of each navigator.credentials.get call made in this
        tab since the last time this was asked, oldest first."""
        return self.page.evaluate(
            """() => {
              const calls = JSON.parse(sessionStorage.getItem("e2e-webauthn-get") || "[]");
              sessionStorage.removeItem("e2e-webauthn-get");
              return calls;
            }"""
        )

    def wait_for_autofill_request(self, timeout_ms: int = 10_000) -> None:
        """Wait until the page has made its autofill (conditional) request.

        With presence simulation off, that request waits at the
        authenticator. Turning presence back on before it is made lets the
        authenticator answer it at once, signing the page in while a test is
        about to click, so tests wait for it first. The record is only read,
        not cleared, so get_calls() still reports it."""
        self.page.wait_for_function(
            """() => {
              const calls = JSON.parse(sessionStorage.getItem("e2e-webauthn-get") || "[]");
              return calls[calls.length - 1] === "conditional";
            }""",
            timeout=timeout_ms,
        )
        # The call is recorded in the page as it is made; give it a moment to
        # reach the browser process, which the DevTools command goes to directly.
        self.page.wait_for_timeout(100)

    def set_presence(self, enabled: bool) -> None:
        """Whether the authenticator answers requests (the user touches it)."""
        self.cdp.send(
            "WebAuthn.setAutomaticPresenceSimulation", {"authenticatorId": self.authenticator_id, "enabled": enabled}
        )


def _add_authenticator(cdp: CDPSession, options: dict) -> str:
    return cdp.send("WebAuthn.addVirtualAuthenticator", {"options": options})["authenticatorId"]


def _browser(live, authenticator_options: dict):
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = chromium.new_context(base_url=live.url)
            context.set_default_timeout(10_000)
            context.add_init_script(RECORD_GET_CALLS)
            page = context.new_page()
            cdp = context.new_cdp_session(page)
            cdp.send("WebAuthn.enable", {"enableUI": False})
            authenticator_id = _add_authenticator(cdp, authenticator_options)
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
