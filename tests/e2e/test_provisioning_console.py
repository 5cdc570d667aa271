"""The console's Identity card in a real browser while a real worker
provisions the handle against Knot, Synapse and S3: claiming starts the three
steps, which turn green without a reload, pushed over the events WebSocket."""

from playwright.sync_api import expect

from identity.models import User
from tests.browser import Browser, orm_access
from tests.e2e.test_passkeys_in_chromium import sign_up
from tests.identity.test_worker_killed_mid_step import BlackHoleDns


def test_claiming_provisions_the_handle_live_and_a_stale_error_clears_as_the_user_types(browser: Browser, worker, backends):
    page = browser.page
    sign_up(browser, "Hedy Lamarr")
    expect(page.locator("body")).to_have_attribute("data-events", "connected")

    handle_input = page.locator("#id_handle")
    handle_input.fill("squatted")
    expect(page.get_by_test_id("availability-result")).to_contain_text("is not available")
    expect(page.get_by_test_id("handle-availability")).to_contain_text("dns taken")

    handle_input.fill("admin")
    page.get_by_test_id("claim-handle").click()
    expect(page.get_by_test_id("handle-error")).to_have_text("'admin' is reserved.")
    # Typed key by key, as a person does: a single programmatic fill can land
    # in the milliseconds before htmx has wired up the freshly swapped card.
    page.locator("#id_handle").fill("")
    page.locator("#id_handle").press_sequentially("hedy", delay=60)
    expect(page.get_by_test_id("handle-error")).to_be_hidden()
    # The check asks the real DNS, Synapse and S3 servers, which can take a
    # few seconds on a busy machine.
    expect(page.get_by_test_id("availability-result")).to_contain_text("hedy is available", timeout=20_000)

    page.get_by_test_id("claim-handle").click()
    expect(page.get_by_test_id("handle")).to_have_text("hedy")
    expect(page.get_by_test_id("identity-notice")).to_contain_text("provisioning queued for hedy")
    expect(page.get_by_test_id("subdomain")).to_have_text("hedy.test.infrasim")
    for kind in ("dns", "matrix", "s3"):
        expect(page.get_by_test_id(f"step-{kind}-status")).to_have_text("succeeded", timeout=30_000)
    expect(page.get_by_test_id("identity-status")).to_have_text("active")
    expect(page.get_by_test_id("provision")).to_have_count(0)
    expect(page.get_by_test_id("identity-updated")).to_have_text("just now")
    assert backends["knot"].query("hedy.test.infrasim", "A") == ["192.0.2.10"]


def test_unconfigured_backends_name_their_settings_for_operators_and_block_a_useless_retry(browser: Browser, worker):
    page = browser.page
    sign_up(browser, "Nora Setup")
    page.locator("#id_handle").fill("nora")
    page.get_by_test_id("claim-handle").click()
    for kind in ("dns", "matrix", "s3"):
        expect(page.get_by_test_id(f"step-{kind}-status")).to_have_text("not configured", timeout=20_000)
    expect(page.get_by_test_id("identity-status")).to_have_text("incomplete")
    expect(page.get_by_test_id("step-dns-setup")).to_have_text("Not set up on this server yet — ask your operator.")
    expect(page.get_by_test_id("step-dns-setup")).not_to_contain_text("DNS_SERVER")
    expect(page.get_by_test_id("provision")).to_be_disabled()
    expect(page.get_by_test_id("retry-blocked")).to_contain_text("Retrying cannot help")

    with orm_access():
        User.objects.filter(display_name="Nora Setup").update(is_staff=True)
    page.reload()
    expect(page.get_by_test_id("step-dns-setup")).to_contain_text(
        "DNS_SERVER, DNS_TSIG_KEY_NAME, DNS_TSIG_SECRET and one of DNS_TARGET_A"
    )
    expect(page.get_by_test_id("step-matrix-setup")).to_contain_text("MATRIX_HOMESERVER_URL, MATRIX_ADMIN_TOKEN")
    expect(page.get_by_test_id("step-s3-setup")).to_contain_text("S3_ENDPOINT_URL, S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY")


def test_retry_is_disabled_while_provisioning_runs_and_offered_once_it_can_help(browser: Browser, worker, backends, settings):
    hanging_dns = BlackHoleDns()
    settings.DNS_PORT = hanging_dns.port
    try:
        page = browser.page
        sign_up(browser, "Pat Pending")
        page.locator("#id_handle").fill("pat")
        page.get_by_test_id("claim-handle").click()
        expect(page.get_by_test_id("step-dns-status")).to_have_text("running", timeout=20_000)
        expect(page.get_by_test_id("provision")).to_be_disabled()
        expect(page.get_by_test_id("retry-blocked")).to_have_text("Provisioning is still running; wait for it to finish.")

        expect(page.get_by_test_id("step-dns-status")).to_have_text("failed", timeout=60_000)
        expect(page.get_by_test_id("step-matrix-status")).to_have_text("succeeded")
        expect(page.get_by_test_id("provision")).to_be_enabled()
        expect(page.get_by_test_id("retry-blocked")).to_have_count(0)
    finally:
        hanging_dns.close()


def test_giving_up_a_handle_names_it_before_and_confirms_after(browser: Browser, worker):
    page = browser.page
    sign_up(browser, "Gil Given")
    page.locator("#id_handle").fill("gil")
    page.get_by_test_id("claim-handle").click()
    expect(page.get_by_test_id("identity-status")).to_have_text("incomplete", timeout=20_000)

    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    page.get_by_test_id("cancel-identity").click()
    expect(page.get_by_test_id("handle")).to_have_text("gil")
    assert asked and "gil" in asked[0]

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id("cancel-identity").click()
    expect(page.get_by_test_id("identity-notice")).to_contain_text(
        "Handle gil given up: its DNS name, Matrix account and bucket are being removed."
    )
    expect(page.locator("#id_handle")).to_be_visible(timeout=20_000)
    expect(page.get_by_test_id("identity-notice")).to_contain_text("Handle gil given up")


def test_a_lost_events_connection_shows_until_it_is_back(browser: Browser):
    page = browser.page
    sockets = []

    def through(route):
        route.connect_to_server()
        sockets.append(route)

    page.route_web_socket("**/ws/events/", through)
    sign_up(browser, "Lena Live")
    indicator = page.get_by_test_id("live-indicator")
    expect(page.locator("body")).to_have_attribute("data-events", "connected")
    expect(indicator).to_be_hidden()

    sockets[-1].close(code=1011, reason="server went away")
    expect(indicator).to_be_visible()
    expect(indicator).to_have_text("disconnected — reconnecting…")

    expect(page.locator("body")).to_have_attribute("data-events", "connected", timeout=10_000)
    expect(indicator).to_be_hidden()
    assert len(sockets) >= 2, "the page opened a new socket"
