"""The console's passkey flows in a real browser: Chromium runs the page's
JavaScript and a DevTools virtual authenticator answers its WebAuthn calls,
against the real ASGI server and database.

A note on the virtual authenticator and conditional mediation: Chromium
(with its WebAuthn UI disabled, as automation needs) answers a conditional
request at once, with no autofill pick, whenever the authenticator simulates
user presence. So on /signin/ the autofill request completes as soon as the
page loads. To sign in with the button the way a user does while the
autofill request waits for them, the tests turn presence simulation off
before the sign-in page loads (the autofill request then waits), and back on
before clicking.
"""

from __future__ import annotations

import re

from django_otp_webauthn.models import WebAuthnCredential
from playwright.sync_api import Page, expect

from identity.models import Identity, User
from tests.browser import PLATFORM_AUTHENTICATOR, Browser, orm_access

# A platform authenticator the user has not touched yet.
HELD_STILL = {**PLATFORM_AUTHENTICATOR, "automaticPresenceSimulation": False}


def sign_up(browser: Browser, name: str) -> None:
    page = browser.page
    page.goto("/signup/")
    page.get_by_test_id("display-name").fill(name)
    page.get_by_test_id("signup-button").click()
    expect(page).to_have_url(browser.url("/"))
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Hello, {name}")


def sign_out(page: Page, name: str) -> None:
    signout = page.get_by_test_id("signout")
    expect(signout).to_have_text(f"Sign out {name}")
    signout.click()
    expect(page).to_have_url(re.compile(r"/signin/$"))
    expect(page.get_by_test_id("signout")).to_have_count(0)


def wait_until(page: Page, condition, describe=lambda: "", timeout_ms: int = 10_000) -> None:
    for _ in range(timeout_ms // 50):
        if condition():
            return
        page.wait_for_timeout(50)  # lets Playwright deliver the page's events
    assert condition(), describe()


def test_sign_up_then_sign_in_with_the_button_and_with_autofill(browser):
    page = browser.page
    sign_up(browser, "Ada Lovelace")

    [credential] = browser.credentials()
    assert credential["isResidentCredential"] is True
    assert credential["rpId"] == "localhost"
    assert credential["userName"] == "Ada Lovelace"

    # The autofill request starts with the page and waits for the user ...
    browser.set_presence(False)
    sign_out(page, "Ada Lovelace")
    expect(page.get_by_test_id("autofill-input")).to_have_attribute("autocomplete", "username webauthn")
    browser.wait_for_autofill_request()
    expect(page).to_have_url(re.compile(r"/signin/$"))
    # ... who uses the button instead: the page cancels the autofill request
    # and asks for a passkey in a modal request.
    browser.set_presence(True)
    page.get_by_test_id("signin-button").click()
    expect(page).to_have_url(browser.url("/"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Hello, Ada Lovelace")
    expect(page.get_by_test_id("signout")).to_have_text("Sign out Ada Lovelace")
    assert browser.get_calls() == ["conditional", "optional"]

    # Autofill: the conditional request, which the page starts on load, is
    # the only one made, and it signs the user in with no click at all.
    with page.expect_response(lambda r: r.url.endswith("/auth/login/verify")) as verify:
        page.get_by_test_id("signout").click()
    assert verify.value.status == 200
    expect(page).to_have_url(browser.url("/"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Hello, Ada Lovelace")
    assert browser.get_calls() == ["conditional"]

    credentials = browser.credentials()
    assert len(credentials) == 1
    assert credentials[0]["isResidentCredential"] is True
    # One registration and two assertions.
    assert credentials[0]["signCount"] == 3


def test_add_a_second_passkey_and_delete_one_but_never_the_last(browser):
    page = browser.page
    page.on("dialog", lambda dialog: dialog.accept())
    sign_up(browser, "Grace Hopper")
    laptop_passkeys = browser.credentials()

    page.get_by_role("link", name="Passkeys").click()
    expect(page).to_have_url(browser.url("/passkeys/"))
    rows = page.get_by_test_id("passkey-row")
    names = rows.get_by_role("textbox", name="Passkey name")
    expect(rows).to_have_count(1)
    expect(names).to_have_value("First passkey")
    expect(rows.get_by_test_id("delete-passkey")).to_have_count(0)
    expect(rows).to_contain_text("last passkey")

    # The device that already holds a passkey for the account is refused ...
    page.get_by_test_id("new-passkey-name").fill("Work laptop")
    page.get_by_test_id("add-passkey").click()
    expect(page.get_by_test_id("passkey-error")).to_have_text(
        "This device already holds a passkey for your account. Use another device or security key."
    )
    expect(rows).to_have_count(1)

    # ... another one is added.
    browser.switch_authenticator()
    page.get_by_test_id("add-passkey").click()
    expect(rows).to_have_count(2)
    expect(names.nth(0)).to_have_value("First passkey")
    expect(names.nth(1)).to_have_value("Work laptop")
    expect(page.get_by_test_id("delete-passkey")).to_have_count(2)
    expect(page.get_by_test_id("passkey-error")).to_be_hidden()
    work_passkeys = browser.credentials()
    assert len(work_passkeys) == 1

    # This session was signed in with that passkey, so it ends too: the
    # browser lands on the sign-in page (the authenticator holds still, so
    # autofill cannot sign it straight back in).
    browser.set_presence(False)
    rows.filter(has=page.locator("input[value='First passkey']")).get_by_test_id("delete-passkey").click()
    expect(page).to_have_url(re.compile(r"/signin/"))
    expect(page.get_by_role("status")).to_have_text(
        "“First passkey” was deleted, and every session signed in with it has ended."
    )
    browser.wait_for_autofill_request()
    browser.set_presence(True)
    page.get_by_test_id("signin-button").click()
    expect(page).to_have_url(browser.url("/passkeys/"))
    expect(rows).to_have_count(1)
    expect(page.get_by_test_id("current-passkey")).to_have_count(1)
    expect(names).to_have_value("Work laptop")
    expect(page.get_by_test_id("delete-passkey")).to_have_count(0)
    expect(rows).to_contain_text("last passkey")
    with orm_access():
        assert list(WebAuthnCredential.objects.values_list("name", flat=True)) == ["Work laptop"]

    # The deleted passkey no longer signs in; the one left does.
    verifications: list[int] = []
    page.on("response", lambda r: verifications.append(r.status) if r.url.endswith("/auth/login/verify") else None)
    browser.switch_authenticator(credentials=laptop_passkeys)
    browser.set_presence(False)
    sign_out(page, "Grace Hopper")
    browser.wait_for_autofill_request()
    browser.set_presence(True)
    page.get_by_test_id("signin-button").click()
    expect(page.get_by_test_id("passkey-error")).to_have_text(
        "The Passkey you tried to use was not found. Perhaps it was removed?"
    )
    # The page tells the browser the passkey is gone (signalUnknownCredential),
    # and the authenticator drops it: the autofill offered again after the
    # failed click has nothing left to answer with.
    wait_until(page, lambda: browser.credentials() == [], lambda: f"still held: {browser.credentials()}")
    page.wait_for_timeout(500)
    assert verifications == [404]
    expect(page).to_have_url(re.compile(r"/signin/$"))

    # The click offered the autofill again; it waits at the new authenticator
    # until the button cancels it, as above.
    browser.wait_for_autofill_request()
    browser.switch_authenticator(HELD_STILL, credentials=work_passkeys)
    browser.set_presence(True)
    page.get_by_test_id("signin-button").click()
    expect(page).to_have_url(browser.url("/"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Hello, Grace Hopper")


def test_claim_a_handle_on_the_dashboard(browser):
    page = browser.page
    sign_up(browser, "Linus")
    card = page.locator("#identity-card")

    card.get_by_label("Handle").fill("1bad")
    card.get_by_test_id("claim-handle").click()
    expect(card.get_by_test_id("handle-error")).to_have_text("A handle must start with a letter.")
    expect(card.get_by_test_id("handle")).to_have_count(0)

    card.get_by_label("Handle").fill("linus")
    card.get_by_test_id("claim-handle").click()
    expect(card.get_by_test_id("handle")).to_have_text("linus")
    expect(card.get_by_test_id("subdomain")).to_have_text("linus.localhost")
    expect(card.get_by_test_id("matrix-id")).to_have_text("@linus:matrix.localhost")
    expect(card.get_by_test_id("bucket")).to_have_text("infrasim-linus")
    expect(card.get_by_test_id("handle-error")).to_have_count(0)
    expect(card.get_by_test_id("claim-handle")).to_have_count(0)

    # It is the user's handle, not just what the page shows.
    page.reload()
    expect(page.get_by_test_id("handle")).to_have_text("linus")
    with orm_access():
        assert Identity.objects.get().user.display_name == "Linus"


def test_an_authenticator_without_user_verification_cannot_sign_up(browser_without_uv):
    page = browser_without_uv.page
    page.goto("/signup/")
    page.get_by_test_id("display-name").fill("Mallory")
    page.get_by_test_id("signup-button").click()

    error = page.get_by_test_id("passkey-error")
    expect(error).to_be_visible()
    expect(error).to_have_text("The passkey request was cancelled or not allowed.")
    expect(page).to_have_url(re.compile(r"/signup/$"))
    expect(page.get_by_test_id("signout")).to_have_count(0)
    assert browser_without_uv.credentials() == []

    page.goto("/")
    expect(page).to_have_url(re.compile(r"/signin/"))
    with orm_access():
        assert not User.objects.filter(signup_state=User.SignupState.ACTIVE).exists()
        assert not WebAuthnCredential.objects.exists()
