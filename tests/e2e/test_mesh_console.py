"""The Mesh card in a real browser: the key pair is made by the page with
WebCrypto, only the public key reaches the server, the config with its
private key is shown once, under its peer; rotate and revoke from the card;
the console conventions (confirmations, phone layout, readable and live
values, the loopback endpoint warning)."""

import datetime as dt
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor

from django.db import connection
from django.template.defaultfilters import filesizeformat
from playwright.sync_api import expect

from mesh import services
from mesh.models import MeshNetwork, Peer
from tests.browser import Browser, orm_access
from tests.e2e.test_passkeys_in_chromium import sign_up


def off_the_page_loop(fn):
    """Run fn in another thread and return its result. Playwright's event
    loop runs on this one, and services' event pushes (async_to_sync) refuse
    to run beside it; so does the ORM, unless orm_access() lifts the guard."""

    def run():
        try:
            return fn()
        finally:
            connection.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


def private_key_in(config: str) -> str:
    return re.search(r"^PrivateKey = (\S+)$", config, re.M).group(1)


def wg_pubkey(private_key: str) -> str:
    return subprocess.run(["wg", "pubkey"], input=private_key, capture_output=True, text=True, check=True).stdout.strip()


def accept_dialogs(page) -> list[str]:
    """Accept every confirm dialog; returns the list their messages go to."""
    asked: list[str] = []

    def accept(dialog):
        asked.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    return asked


def create_peer(page, name: str, *, mode: str = "browser") -> None:
    page.get_by_test_id("peer-name").fill(name)
    page.locator(f"input[name=key_mode][value={mode}]").check()
    page.get_by_test_id("create-peer").click()


def row_of(page, name: str):
    return page.get_by_test_id("peer-row").filter(has_text=name)


def test_create_a_peer_with_a_browser_made_key_then_rotate_and_revoke_it(browser: Browser):
    page = browser.page
    asked = accept_dialogs(page)
    sign_up(browser, "Radia Perlman")
    expect(page.get_by_test_id("no-peers")).to_be_visible()

    create_peer(page, "laptop")
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
    expect(page.get_by_test_id("mesh-status")).to_have_text(f"Peer “laptop” created: {peer.ipv4}, {peer.ipv6}.")
    # The config sits in the row right under its peer, named for it.
    expect(page.locator("tr[data-testid=peer-row] + tr[data-testid=peer-secret]")).to_have_count(1)
    expect(page.get_by_test_id("peer-config-download")).to_have_attribute("download", "infrasim-laptop.conf")
    # The browser's key was never on the server: no QR of it, and none of the
    # key-less download either.
    expect(page.get_by_test_id("peer-qr")).to_be_hidden()
    expect(page.get_by_test_id("qr-link")).to_have_count(0)

    page.get_by_test_id("rotate-peer").click()
    expect(page.get_by_test_id("peer-row")).to_contain_text("key #2")
    expect(page.get_by_test_id("peer-row")).to_contain_text("rotated just now")
    expect(page.get_by_test_id("mesh-status")).to_have_text("Peer “laptop” has a new key (#2); its old key no longer works.")
    assert "“laptop”" in asked[-1]
    rotated = private_key_in(page.get_by_test_id("peer-config").input_value())
    assert rotated != private
    with orm_access():
        assert Peer.objects.get(pk=peer.pk).public_key == wg_pubkey(rotated)

    page.get_by_test_id("revoke-peer").click()
    assert asked[-1] == f"Revoke the peer “laptop” ({peer.ipv4})? It stops working at once."
    expect(page.get_by_test_id("peer-row")).to_have_count(0)
    expect(page.get_by_test_id("no-peers")).to_be_visible()
    expect(page.get_by_test_id("mesh-status")).to_have_text("Peer “laptop” revoked: it can no longer connect.")
    expect(page.get_by_test_id("peer-secret")).to_have_count(0)
    with orm_access():
        assert Peer.objects.get(pk=peer.pk).status == "revoked"


def test_declining_the_revoke_dialog_keeps_the_peer(browser: Browser):
    page = browser.page
    sign_up(browser, "Second Thoughts")
    create_peer(page, "keeper")
    expect(page.get_by_test_id("peer-row")).to_have_count(1)
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_test_id("revoke-peer").click()
    page.wait_for_timeout(500)
    expect(page.get_by_test_id("peer-row")).to_have_count(1)
    with orm_access():
        assert Peer.objects.get(name="keeper").status == "active"


def test_a_secret_sits_under_its_own_peer_and_goes_at_the_next_action(browser: Browser):
    page = browser.page
    sign_up(browser, "Vint Cerf")
    create_peer(page, "phone", mode="server")
    expect(page.get_by_test_id("peer-qr")).to_have_attribute("src", re.compile(r"^data:image/png;base64,"))
    expect(page.get_by_test_id("peer-qr")).to_be_visible()
    first = private_key_in(page.get_by_test_id("peer-config").input_value())

    create_peer(page, "Lab Box", mode="server")
    expect(page.get_by_test_id("mesh-status")).to_contain_text("Peer “Lab Box” created")
    secret = page.get_by_test_id("peer-secret")
    expect(secret).to_have_count(1)
    expect(secret).to_contain_text("The config of “Lab Box”")
    expect(page.locator("tr[data-testid=peer-row]:has-text('Lab Box') + tr[data-testid=peer-secret]")).to_have_count(1)
    expect(page.get_by_test_id("peer-config-download")).to_have_attribute("download", "infrasim-lab-box.conf")
    second = private_key_in(page.get_by_test_id("peer-config").input_value())
    assert second != first and first not in page.content()

    # The card refreshes itself while the gateway catches up (no gateway
    # here: every second); the secret stays through a refresh.
    with page.expect_response(lambda response: response.url.endswith("/mesh/card")):
        pass
    page.wait_for_timeout(200)
    expect(secret).to_be_visible()
    expect(page.get_by_test_id("peer-config")).to_have_value(re.compile(re.escape(second)))

    page.reload()
    expect(page.get_by_test_id("peer-row")).to_have_count(2)
    expect(page.get_by_test_id("peer-secret")).to_have_count(0)
    assert second not in page.content()


def test_the_copy_button_copies_the_config(browser: Browser):
    page = browser.page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    sign_up(browser, "Copy Cat")
    create_peer(page, "desk", mode="server")
    config = page.get_by_test_id("peer-config").input_value()
    page.get_by_test_id("copy-config").click()
    expect(page.get_by_test_id("copy-config")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == config.strip()


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


def test_on_a_phone_the_peers_are_cards_with_labelled_readable_values(browser: Browser):
    page = browser.page
    page.set_viewport_size({"width": 390, "height": 844})
    sign_up(browser, "Pocket User")
    expires = (dt.datetime.now() + dt.timedelta(days=3)).strftime("%Y-%m-%dT%H:%M")
    page.get_by_test_id("peer-name").fill("tablet")
    page.get_by_test_id("peer-expires-input").fill(expires)
    page.get_by_test_id("create-peer").click()
    row = page.get_by_test_id("peer-row")
    expect(row).to_have_count(1)
    expect(page.get_by_test_id("peer-table").locator("thead")).to_be_hidden()
    labels = row.locator("td").evaluate_all(
        "cells => cells.map(c => [getComputedStyle(c, '::before').content, getComputedStyle(c).display])"
    )
    assert labels == [
        [f'"{label}"', "grid"] for label in ("Peer", "Address", "Handshake", "Transfer", "Expires", "Actions")
    ]
    # Each label stands left of its value, on the same line.
    box = row.locator("td[data-label=Address] code").first.bounding_box()
    assert box["x"] > 100, "the value is pushed right by its label"
    expect(page.get_by_test_id("peer-handshake")).to_have_text("never")
    expect(page.get_by_test_id("peer-transfer")).to_have_text("↓0\xa0bytes ↑0\xa0bytes")
    expect(page.get_by_test_id("peer-expires")).to_have_text(re.compile(r"^in [23]\sdays\s*$"))
    expect(page.get_by_test_id("peer-expires").locator("time")).to_have_attribute("title", re.compile(r"UTC$"))


def test_handshakes_and_traffic_show_up_live_from_the_gateway(browser: Browser, topology):  # noqa: F811
    from identity.models import User
    from tests.mesh.test_tunnels import wg_genkey

    page = browser.page
    sign_up(browser, "Stats Watcher")
    private, public = wg_genkey()

    def mesh_with_a_peer():
        user = User.objects.get(display_name="Stats Watcher")
        network = services.network_create(
            actor=None, name=f"mesh-{topology.token}", ipv4_cidr=str(topology.v4_pool),
            ipv6_prefix=str(topology.v6_pool), endpoint=topology.endpoint, listen_port=51820,
            interface=topology.gateway_interface, gateway_netns=topology.gateway_netns,
        )
        peer = services.peer_create(actor=user, name="desk", public_key=public, network=network).peer
        services.gateway_sync(network_id=network.pk)
        return network, services.peer_config(actor=user, peer_id=peer.pk)

    network, conf = off_the_page_loop(mesh_with_a_peer)
    expect(page.get_by_test_id("peer-row")).to_have_count(1)
    expect(page.get_by_test_id("peer-handshake")).to_have_text("never")
    # In sync, the card stops looking again by itself: only a pushed event refreshes it now.
    expect(page.get_by_test_id("gateway-state")).to_have_text("gateway in sync")
    page.evaluate("window.notReloaded = true")

    node = topology.add_peer()
    node.bring_up(conf, private)
    node.ping_until_ok(topology.gateway_v4.split("/")[0])
    # What the periodic mesh.tasks.collect_stats does on the gateway's host.
    assert off_the_page_loop(lambda: services.gateway_collect_stats(network_id=network.pk)) == 1

    expect(page.get_by_test_id("peer-handshake")).to_have_text("just now")
    rx, tx = off_the_page_loop(lambda: Peer.objects.values_list("rx_bytes", "tx_bytes").get(name="desk"))
    assert rx > 0 and tx > 0
    expect(page.get_by_test_id("peer-transfer")).to_have_text(f"↓{filesizeformat(rx)} ↑{filesizeformat(tx)}")
    assert page.evaluate("window.notReloaded") is True


def test_a_loopback_endpoint_is_flagged_with_a_fix_for_operators(browser: Browser):
    page = browser.page
    sign_up(browser, "Ada Operator")
    warning = page.get_by_test_id("loopback-warning")
    expect(warning).to_have_text(
        "Devices elsewhere cannot reach 127.0.0.1:51820. An operator must set WG_GATEWAY_ENDPOINT "
        "(or the network's endpoint in the admin) to an address they can reach."
    )
    create_peer(page, "laptop")
    expect(page.get_by_test_id("peer-row")).to_have_count(1)
    expect(warning).to_be_visible()
    expect(page.get_by_test_id("network-admin-link")).to_have_count(0)

    with orm_access():
        from identity.models import User

        User.objects.filter(display_name="Ada Operator").update(is_staff=True)
        network = MeshNetwork.objects.get()
    page.reload()
    link = page.get_by_test_id("network-admin-link")
    expect(link).to_have_attribute("href", f"/admin/mesh/meshnetwork/{network.pk}/change/")

    with orm_access():
        MeshNetwork.objects.update(endpoint="vpn.example.net:51820")
    page.reload()
    expect(page.get_by_test_id("peer-row")).to_have_count(1)
    expect(warning).to_have_count(0)


def test_the_card_shows_the_gateway_catching_up(browser: Browser):
    from django.db.models import F

    page = browser.page
    sign_up(browser, "Sync Watcher")
    create_peer(page, "desk", mode="server")
    # No gateway interface exists here: "applying…", or "not reachable" if a
    # worker of an earlier test already tried and failed to sync.
    expect(page.get_by_test_id("gateway-state")).to_have_text(re.compile("applying…|gateway not reachable"))
    with orm_access():
        # What the gateway host's worker records once `wg syncconf` succeeded.
        MeshNetwork.objects.update(applied_generation=F("generation"), last_sync_error="")
    expect(page.get_by_test_id("gateway-state")).to_have_text("gateway in sync", timeout=5_000)
