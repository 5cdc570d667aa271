"""The API tokens page in Chromium: sudo mode before creating, the secret
beside its own token with a copy button, a named and confirmed revoke, and
labelled cards on a phone."""

from __future__ import annotations

import re
import time

from playwright.sync_api import expect

from tests.browser import Browser, orm_access
from tests.e2e.test_passkeys_in_chromium import sign_up


def test_create_copy_and_revoke_a_token(browser: Browser):
    page = browser.page
    sign_up(browser, "Tom Token")
    page.goto("/tokens/")
    expect(page.get_by_test_id("recheck-prompt")).to_have_count(0)

    page.locator("#id_name").fill("ci runner")
    page.locator("#id_scope").select_option("write")
    page.get_by_test_id("create-token").click()
    row = page.get_by_test_id("token-row")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("ci runner")
    expect(row).to_contain_text("read-write")
    expect(row).to_contain_text("just now")
    secret = page.get_by_test_id("new-token")
    expect(secret).to_have_text(re.compile(r"^isk_[0-9a-f]{8}_\S+$"))
    # The secret sits in the row right under its token.
    assert page.evaluate(
        "document.querySelector('[data-testid=token-row]').nextElementSibling.contains(document.getElementById('new-token'))"
    )
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.get_by_test_id("copy-token").click()
    expect(page.get_by_test_id("copy-token")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == secret.inner_text().strip()

    # Gone after the next action; a reload neither shows it again nor posts
    # the form a second time.
    page.reload()
    expect(page.get_by_test_id("new-token")).to_have_count(0)
    expect(page.locator(".errorlist")).to_have_count(0)
    expect(row).to_have_count(1)

    dialogs: list[str] = []
    page.once("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.get_by_test_id("revoke-token").click()
    assert dialogs and "“ci runner”" in dialogs[0]
    expect(row).not_to_contain_text("revoked")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id("revoke-token").click()
    expect(page.get_by_role("status")).to_contain_text("“ci runner”")
    expect(page.get_by_role("status")).to_contain_text("was revoked: it no longer works.")
    expect(row).to_contain_text("revoked")
    with orm_access():
        from identity.models import ApiToken

        assert ApiToken.objects.get(name="ci runner").revoked_at is not None


def test_a_stale_session_confirms_with_its_passkey_before_creating_a_token(browser: Browser):
    page = browser.page
    sign_up(browser, "Sue Sudo")
    with orm_access():
        from identity.models import UserSession
        from identity.sessions import CHECKED_AT_KEY, SessionStore

        row = UserSession.objects.get(user__display_name="Sue Sudo")
        store = SessionStore()
        data = store.decode(row.session_data)
        data[CHECKED_AT_KEY] = time.time() - 11 * 60
        UserSession.objects.filter(pk=row.pk).update(session_data=store.encode(data))
    page.goto("/tokens/")
    expect(page.get_by_test_id("recheck-prompt")).to_be_visible()
    page.locator("#id_name").fill("late")
    page.get_by_test_id("create-token").click()
    expect(page.locator(".messages")).to_contain_text("Confirm with your passkey first")
    expect(page.get_by_test_id("token-row")).to_have_count(0)

    page.get_by_test_id("recheck").click()
    expect(page.get_by_test_id("recheck-prompt")).to_have_count(0)
    page.locator("#id_name").fill("fresh")
    page.get_by_test_id("create-token").click()
    expect(page.get_by_test_id("new-token")).to_be_visible()


def test_on_a_phone_tokens_are_labelled_cards(browser: Browser):
    page = browser.page
    sign_up(browser, "Pia Phone")
    page.goto("/tokens/")
    page.locator("#id_name").fill("phone")
    page.get_by_test_id("create-token").click()
    page.set_viewport_size({"width": 390, "height": 844})
    expect(page.locator("table.list thead")).to_be_hidden()
    labels = page.evaluate(
        """[...document.querySelectorAll('[data-testid=token-row] td')].map(
            td => getComputedStyle(td, '::before').content)"""
    )
    assert labels[:6] == ['"Name"', '"Scope"', '"Prefix"', '"Created"', '"Expires"', '"Last used"'], labels
