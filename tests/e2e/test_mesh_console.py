"""The Mesh card in a real browser: the key pair is made by the page with
WebCrypto, only the public key reaches the server, the config with its
private key is shown once; rotate and revoke from the card."""

import re
import subprocess

from playwright.sync_api import expect

from mesh.models import Peer
from tests.e2e.conftest import Browser, orm_access
from tests.e2e.test_passkeys_in_chromium import sign_up


def private_key_in(config: str) -> str:
    return re.search(r"^PrivateKey = (\S+)$", config, re.M).group(1)


def wg_pubkey(private_key: str) -> str:
    return subprocess.run(["wg", "pubkey"], input=private_key, capture_output=True, text=True, check=True).stdout.strip()


def test_create_a_peer_with_a_browser_made_key_then_rotate_and_revoke_it(browser: Browser):
    page = browser.page
    page.on("dialog", lambda dialog: dialog.accept())
    sign_up(browser, "Radia Perlman")
    expect(page.get_by_test_id("no-peers")).to_be_visible()

    page.get_by_test_id("peer-name").fill("laptop")
    page.get_by_test_id("create-peer").click()
    expect(page.get_by_test_id("peer-secret")).to_be_visible()
    config = page.get_by_test_id("peer-config").input_value()
    private = private_key_in(config)
    expect(page.get_by_test_id("peer-row")).to_have_count(1)
    with orm_access():
        peer = Peer.objects.get(name="laptop")
        assert peer.public_key == wg_pubkey(private), "the server holds the public half of the browser's key"
        assert peer.key_generated_by_server is False
        assert private not in str(Peer.objects.filter(pk=peer.pk).values().first())
    assert f"Address = {peer.ipv4}/32" in config
    expect(page.get_by_test_id("peer-ipv4")).to_have_text(peer.ipv4)

    page.get_by_test_id("rotate-peer").click()
    expect(page.get_by_test_id("peer-row")).to_contain_text("key #2")
    rotated = private_key_in(page.get_by_test_id("peer-config").input_value())
    assert rotated != private
    with orm_access():
        assert Peer.objects.get(pk=peer.pk).public_key == wg_pubkey(rotated)

    page.get_by_test_id("revoke-peer").click()
    expect(page.get_by_test_id("peer-row")).to_have_count(0)
    expect(page.get_by_test_id("no-peers")).to_be_visible()
    with orm_access():
        assert Peer.objects.get(pk=peer.pk).status == "revoked"


def test_a_server_generated_key_comes_with_a_qr_code_shown_once(browser: Browser):
    page = browser.page
    sign_up(browser, "Vint Cerf")
    page.get_by_test_id("peer-name").fill("phone")
    page.locator("input[name=key_mode][value=server]").check()
    page.get_by_test_id("create-peer").click()
    expect(page.get_by_test_id("peer-qr")).to_have_attribute("src", re.compile(r"^data:image/png;base64,"))
    private = private_key_in(page.get_by_test_id("peer-config").input_value())
    page.reload()
    expect(page.get_by_test_id("peer-secret")).to_be_hidden()
    assert private not in page.content()


def test_a_malformed_public_key_shows_an_error_naming_the_field(browser: Browser):
    page = browser.page
    sign_up(browser, "Bad Key")
    page.get_by_test_id("peer-name").fill("typo")
    page.get_by_test_id("own-key-mode").check()
    page.get_by_test_id("peer-public-key").fill("definitely-not-a-key")
    page.get_by_test_id("create-peer").click()
    expect(page.get_by_test_id("mesh-error")).to_contain_text("public_key")
    with orm_access():
        assert not Peer.objects.exists()


def test_the_card_shows_the_gateway_catching_up(browser: Browser):
    from django.db.models import F

    from mesh.models import MeshNetwork

    page = browser.page
    sign_up(browser, "Sync Watcher")
    page.get_by_test_id("peer-name").fill("desk")
    page.locator("input[name=key_mode][value=server]").check()
    page.get_by_test_id("create-peer").click()
    # No gateway interface exists here: "applying…", or "not reachable" if a
    # worker of an earlier test already tried and failed to sync.
    expect(page.get_by_test_id("gateway-state")).to_have_text(re.compile("applying…|gateway not reachable"))
    with orm_access():
        # What the gateway host's worker records once `wg syncconf` succeeded.
        MeshNetwork.objects.update(applied_generation=F("generation"), last_sync_error="")
    expect(page.get_by_test_id("gateway-state")).to_have_text("gateway in sync", timeout=5_000)
