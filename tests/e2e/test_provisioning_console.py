"""The console's Identity card in a real browser while a real worker
provisions the handle against Knot, Synapse and S3: the three steps turn
green without a reload, pushed over the events WebSocket."""

from playwright.sync_api import expect

from tests.e2e.conftest import Browser
from tests.e2e.test_passkeys_in_chromium import sign_up


def test_the_three_steps_turn_green_live_and_a_taken_name_is_flagged(browser: Browser, worker, backends):
    page = browser.page
    sign_up(browser, "Hedy Lamarr")
    expect(page.locator("body")).to_have_attribute("data-events", "connected")

    handle_input = page.locator("#id_handle")
    handle_input.fill("squatted")
    expect(page.get_by_test_id("availability-result")).to_contain_text("is not available")
    expect(page.get_by_test_id("handle-availability")).to_contain_text("dns taken")
    handle_input.fill("hedy")
    expect(page.get_by_test_id("availability-result")).to_contain_text("hedy is available")

    page.get_by_test_id("claim-handle").click()
    expect(page.get_by_test_id("handle")).to_have_text("hedy")
    expect(page.get_by_test_id("subdomain")).to_have_text("hedy.test.infrasim")
    page.get_by_test_id("provision").click()
    for kind in ("dns", "matrix", "s3"):
        expect(page.get_by_test_id(f"step-{kind}-status")).to_have_text("succeeded", timeout=30_000)
    expect(page.get_by_test_id("identity-status")).to_have_text("active")
    assert backends["knot"].query("hedy.test.infrasim", "A") == ["192.0.2.10"]
