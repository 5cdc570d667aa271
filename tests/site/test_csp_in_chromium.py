"""The console, the browsable API and the API docs work in a real browser
under the Content-Security-Policy, without a single violation."""

from playwright.sync_api import expect

from tests.browser import Browser
from tests.e2e.test_passkeys_in_chromium import sign_up


def test_no_page_trips_the_content_security_policy(browser: Browser):
    page = browser.page
    violations = []
    page.on("console", lambda msg: violations.append((page.url, msg.location, msg.text[-60:])) if "Content Security Policy" in msg.text else None)

    sign_up(browser, "Ada Lovelace")
    expect(page.locator("body")).to_have_attribute("data-events", "connected")
    page.goto("/passkeys/")
    expect(page.get_by_test_id("passkey-row")).to_have_count(1)
    page.goto("/tokens/")
    expect(page.get_by_role("heading", level=1)).to_be_visible()
    for path in ("/api/", "/api/meshnet/tokens", "/api/meshnet/mesh/peers"):
        page.goto(path)
        expect(page.locator(".response-info")).to_be_visible()
    page.goto("/api/docs/")
    expect(page.locator(".swagger-ui .opblock").first).to_be_visible()

    assert violations == []
