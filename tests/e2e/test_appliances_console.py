"""The console's Appliances card in a real browser: it lists the user's
appliances and follows their status live (pushed over the events socket as
the worker side records each step), creates one through the JSON API with
errors next to their field, and names what it deletes. The host here is a
Host row whose queue no worker consumes, so nothing boots."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from appliances import jobs, services
from appliances.models import Appliance, CacheEntry, Host, Operation
from identity.models import User
from tests.appliances.conftest import TEMPLATE, make_host, ssh_public_key
from tests.browser import Browser, orm_access
from tests.e2e.test_mesh_console import accept_dialogs, off_the_page_loop
from tests.e2e.test_passkeys_in_chromium import sign_up

Status = Appliance.Status


def appliance_of(display_name: str, name: str = "web") -> Appliance:
    """Made by the service, as the API would (its create job stays queued)."""

    def create():
        if not Host.objects.filter(name="idle").exists():
            make_host("idle")
        owner = User.objects.get(display_name=display_name)
        return services.appliance_create(actor=owner, name=name, template=TEMPLATE, memory_mib=1536, disk_gib=8)

    return off_the_page_loop(create)


def finish_jobs(appliance: Appliance, status: str, detail: str = "", **fields) -> None:
    """What the host's worker records when its job is done."""

    def settle():
        Operation.objects.filter(appliance=appliance).update(status="succeeded", progress=100)
        jobs.set_status(appliance, status, detail, **fields)

    off_the_page_loop(settle)


def test_the_card_lists_an_appliance_and_follows_its_status_live(browser: Browser):
    page = browser.page
    sign_up(browser, "Margaret Hamilton")
    expect(page.locator("body")).to_have_attribute("data-events", "connected")
    expect(page.get_by_test_id("no-appliances")).to_be_visible()
    page.evaluate("window.notReloaded = true")

    appliance = appliance_of("Margaret Hamilton")
    row = page.get_by_test_id("appliance")
    expect(row).to_have_count(1)
    expect(row.get_by_test_id("appliance-name")).to_have_text("web")
    expect(row.get_by_test_id("appliance-status")).to_have_text("pending")
    expect(row.get_by_test_id("appliance-job")).to_contain_text("create: pending")
    expect(row.get_by_test_id("appliance-progress")).to_have_text("0 %")
    expect(row.get_by_test_id("appliance-placement")).to_contain_text("Debian 12 (built on this host) on idle")
    expect(row.get_by_test_id("appliance-size")).to_have_text("1 vCPU, 1.5 GiB memory, 8 GiB disk")
    with orm_access():
        peer = Appliance.objects.select_related("peer").get(pk=appliance.pk).peer
    expect(row.get_by_test_id("appliance-ipv4")).to_have_text(peer.ipv4)
    expect(row.get_by_test_id("appliance-ipv6")).to_have_text(peer.ipv6)
    # While its create job runs, nothing else can start on it.
    expect(row.get_by_test_id("action-start")).to_be_disabled()
    expect(row.get_by_test_id("action-start")).to_have_attribute("title", "Busy: create is running.")

    off_the_page_loop(lambda: Operation.objects.filter(appliance=appliance).update(status="running", progress=40))
    off_the_page_loop(lambda: jobs.set_status(appliance, Status.PREPARING_IMAGE, "building the Debian image"))
    expect(row.get_by_test_id("appliance-status")).to_have_text("preparing image")
    expect(row.get_by_test_id("appliance-detail")).to_have_text("building the Debian image")
    expect(row.get_by_test_id("appliance-progress")).to_have_text("40 %")

    finish_jobs(appliance, Status.READY)
    expect(row.get_by_test_id("appliance-status")).to_have_text("ready")
    expect(row.get_by_test_id("appliance-job")).to_have_count(0)
    expect(row.get_by_test_id("action-shutdown")).to_be_enabled()
    expect(row.get_by_test_id("action-start")).to_be_disabled()
    expect(row.get_by_test_id("action-start")).to_have_attribute(
        "title", "Not while it is ready. It is already running, or still being made."
    )
    expect(row.get_by_test_id("open-console")).to_have_attribute("href", f"/appliances/{appliance.pk}/console")
    expect(row.get_by_test_id("console-log")).to_have_attribute(
        "href", f"/api/meshnet/appliances/{appliance.pk}/console-log"
    )

    error = "cloud-init did not phone home within 900 s of the boot; its serial console log is attached."
    finish_jobs(appliance, Status.FAILED, "timed out while booting", last_error=error,
                failure_console_log="[  OK  ] Reached target cloud-init.target\nwg-quick: no route to gateway\n")
    expect(row.get_by_test_id("appliance-status")).to_have_text("failed")
    expect(row.get_by_test_id("appliance-error")).to_have_text(error)
    row.get_by_text("Its serial console when it failed").click()
    expect(row.get_by_test_id("failure-console-log")).to_contain_text("wg-quick: no route to gateway")
    expect(row.get_by_test_id("action-start")).to_be_enabled()
    assert page.evaluate("window.notReloaded") is True


def test_the_create_form_shows_errors_beside_their_fields_then_creates_through_the_api(browser: Browser, tmp_path):
    page = browser.page
    sign_up(browser, "Grace Create")
    with orm_access():
        make_host("idle")
    page.reload()
    form = page.get_by_test_id("create-appliance-form")
    expect(form).to_be_visible()
    expect(page.get_by_test_id("appliance-template")).to_have_value(TEMPLATE)
    expect(page.get_by_test_id("template-hint")).to_have_text(
        "Not cached yet: the first appliance builds it on its host, which takes a few minutes."
    )
    expect(page.get_by_test_id("appliance-template").locator("option").first).to_have_text(
        "Debian 12 (built on this host) — first use builds it"
    )
    expect(page.get_by_test_id("appliance-memory")).to_have_attribute("placeholder", "512")

    page.get_by_test_id("appliance-name-input").fill("web")
    page.get_by_test_id("appliance-ssh-keys").fill("ssh-ed25519 AAAAnotakey")
    page.get_by_test_id("create-appliance").click()
    key_error = page.get_by_test_id("error-ssh_authorized_keys")
    expect(key_error).to_contain_text("key 1")
    expect(page.get_by_test_id("appliance-ssh-keys")).to_have_attribute("aria-invalid", "true")
    # Beside its own field: right under the keys, above the next field.
    keys_box = page.get_by_test_id("appliance-ssh-keys").bounding_box()
    error_box = key_error.bounding_box()
    assert 0 <= error_box["y"] - (keys_box["y"] + keys_box["height"]) < 20
    expect(page.get_by_test_id("error-name")).to_be_hidden()
    expect(page.get_by_test_id("appliances-error")).to_be_hidden()

    page.get_by_test_id("appliance-disk").fill("1")
    page.get_by_test_id("create-appliance").click()
    expect(page.get_by_test_id("error-disk_gib")).to_have_text("At least 2.")
    page.get_by_test_id("appliance-disk").fill("")
    expect(page.get_by_test_id("error-disk_gib")).to_be_hidden()
    with orm_access():
        assert not Appliance.objects.exists()

    key = ssh_public_key(tmp_path)
    page.get_by_test_id("appliance-ssh-keys").fill(f"{key}\n\n")
    expect(key_error).to_be_hidden()
    page.get_by_test_id("appliance-memory").fill("768")
    page.get_by_test_id("create-appliance").click()
    with orm_access():
        expect(page.get_by_test_id("appliance")).to_have_count(1)
        appliance = Appliance.objects.select_related("peer", "host").get()
    assert (appliance.name, appliance.memory_mib, appliance.ssh_authorized_keys) == ("web", 768, [key])
    expect(page.get_by_test_id("appliances-status")).to_have_text(
        f"“web” created on idle with mesh address {appliance.peer.ipv4}: its host is preparing it now, "
        "and its status below follows every step."
    )
    expect(page.get_by_test_id("appliance-status")).to_have_text("pending")
    expect(page.get_by_test_id("appliance-name-input")).to_have_value("")

    page.get_by_test_id("appliance-name-input").fill("web")
    page.get_by_test_id("create-appliance").click()
    expect(page.get_by_test_id("error-name")).to_have_text("You already have an appliance named 'web'.")

    # The host finished building the image: the form says so at the next refresh.
    with orm_access():
        CacheEntry.objects.create(host=appliance.host, template=appliance.template, status="succeeded")
    off_the_page_loop(lambda: jobs.set_status(appliance, Status.PROVISIONING, "writing the seed"))
    expect(page.get_by_test_id("appliance-status")).to_have_text("provisioning")
    expect(page.get_by_test_id("appliance-template").locator("option").first).to_have_text(
        "Debian 12 (built on this host) — cached"
    )
    expect(page.get_by_test_id("template-hint")).to_have_text("Cached on idle: a new appliance starts from it at once.")
    expect(page.get_by_test_id("appliance-name-input")).to_have_value("web"), "the form keeps what was typed"


def test_deleting_asks_first_and_names_the_appliance(browser: Browser):
    page = browser.page
    sign_up(browser, "Dee Leet")
    appliance = appliance_of("Dee Leet", name="scratch")
    finish_jobs(appliance, Status.READY)
    with orm_access():
        ipv4 = Appliance.objects.select_related("peer").get(pk=appliance.pk).peer.ipv4
    row = page.get_by_test_id("appliance")
    expect(row.get_by_test_id("appliance-status")).to_have_text("ready")
    delete = row.get_by_test_id("delete-appliance")
    expect(delete).to_have_text("Delete “scratch”")

    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    delete.click()
    page.wait_for_timeout(300)
    assert asked == [
        f"Delete the appliance “scratch” ({ipv4})? Its disk, its snapshots and its mesh peer are removed for good."
    ]
    expect(row.get_by_test_id("appliance-status")).to_have_text("ready")
    with orm_access():
        assert Appliance.objects.get(pk=appliance.pk).status == Status.READY

    accepted = accept_dialogs(page)
    delete.click()
    expect(page.get_by_test_id("appliances-status")).to_have_text(
        "Deleting “scratch”: its domain, disk, snapshots and mesh peer are being removed."
    )
    expect(row.get_by_test_id("appliance-status")).to_have_text("deleting")
    expect(row.get_by_test_id("delete-appliance")).to_be_disabled()
    assert accepted == asked
    with orm_access():
        assert Appliance.objects.get(pk=appliance.pk).status == Status.DELETING
        assert Operation.objects.filter(appliance=appliance, kind="delete", status="pending").exists()


def test_actions_say_what_they_did_and_power_off_asks_first(browser: Browser):
    page = browser.page
    sign_up(browser, "Act Ion")
    appliance = appliance_of("Act Ion")
    finish_jobs(appliance, Status.READY)
    row = page.get_by_test_id("appliance")
    expect(row.get_by_test_id("appliance-status")).to_have_text("ready")

    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    row.get_by_test_id("action-poweroff").click()
    page.wait_for_timeout(300)
    assert asked == ["Power off “web” at once? It is like pulling the plug: what the guest has not saved is lost."]
    with orm_access():
        assert not Operation.objects.filter(appliance=appliance, kind="poweroff").exists()

    row.get_by_test_id("action-reboot").click()
    expect(page.get_by_test_id("appliances-status")).to_have_text("Rebooting “web”: its guest is asked to restart.")
    expect(row.get_by_test_id("appliance-job")).to_contain_text("reboot: pending")
    expect(row.get_by_test_id("action-poweroff")).to_be_disabled()
    expect(row.get_by_test_id("action-poweroff")).to_have_attribute("title", "Busy: reboot is running.")
    assert len(asked) == 1, "a reboot asks nothing"
    with orm_access():
        assert Operation.objects.filter(appliance=appliance, kind="reboot", status="pending").count() == 1


def test_snapshots_are_listed_taken_and_reverted_with_a_confirmation(browser: Browser):
    page = browser.page
    sign_up(browser, "Snap Shot")
    appliance = appliance_of("Snap Shot")
    finish_jobs(appliance, Status.STOPPED)
    with orm_access():
        snapshot = appliance.snapshots.create(name="clean-install", with_memory=False, state="shutoff")
    page.reload()
    row = page.get_by_test_id("appliance")
    row.get_by_test_id("snapshots").locator("summary").click()
    expect(row.get_by_test_id("snapshot")).to_have_text(re.compile(r"clean-install\s+disk only, taken just now"))

    row.get_by_test_id("snapshot-name").fill("clean-install")
    row.get_by_test_id("take-snapshot").click()
    expect(page.get_by_test_id("appliances-error")).to_have_text(
        "Snapshot of “web”: 'web' already has a snapshot named 'clean-install'."
    )
    row.get_by_test_id("snapshot-name").fill("before upgrade")
    row.get_by_test_id("take-snapshot").click()
    expect(page.get_by_test_id("appliances-error")).to_have_text(
        "Snapshot of “web”: Letters, digits, '-', '_' and '.' only."
    )
    # The panel stays open and the name stays typed through the card's refresh.
    expect(row.get_by_test_id("snapshots")).to_have_attribute("open", "")
    expect(row.get_by_test_id("snapshot-name")).to_have_value("before upgrade")
    row.get_by_test_id("snapshot-name").fill("before-upgrade")
    row.get_by_test_id("take-snapshot").click()
    expect(page.get_by_test_id("appliances-status")).to_have_text("Taking the snapshot “before-upgrade” of “web”.")
    expect(row.get_by_test_id("appliance-job")).to_contain_text("create snapshot: pending")
    expect(row.get_by_test_id("revert-snapshot")).to_be_disabled()
    with orm_access():
        operation = Operation.objects.get(appliance=appliance, kind="snapshot_create")
        assert operation.params == {"name": "before-upgrade", "description": ""}

    off_the_page_loop(lambda: Operation.objects.filter(pk=operation.pk).update(status="succeeded"))
    page.evaluate("htmx.ajax('GET', '/appliances/card', {target: '#appliances-slot', swap: 'innerHTML'})")
    asked = accept_dialogs(page)
    row.get_by_test_id("revert-snapshot").click()
    assert asked == ["Revert “web” to its snapshot “clean-install”? What changed since it was taken is lost."]
    expect(page.get_by_test_id("appliances-status")).to_have_text("Reverting “web” to its snapshot “clean-install”.")
    with orm_access():
        revert = Operation.objects.get(appliance=appliance, kind="snapshot_revert")
        assert revert.params == {"snapshot": snapshot.pk, "name": "clean-install"}


def test_on_a_phone_each_appliance_is_a_card_with_labelled_values(browser: Browser):
    page = browser.page
    page.set_viewport_size({"width": 390, "height": 844})
    sign_up(browser, "Pocket Admin")
    appliance_of("Pocket Admin")
    row = page.get_by_test_id("appliance-row")
    expect(row).to_have_count(1)
    expect(page.get_by_test_id("appliance-table").locator("thead")).to_be_hidden()
    labels = row.locator("td").evaluate_all("cells => cells.map(c => getComputedStyle(c, '::before').content)")
    assert labels == [f'"{label}"' for label in ("Appliance", "Status", "Mesh address", "Size", "Actions")]
    card = page.get_by_test_id("appliance")
    assert card.evaluate("body => getComputedStyle(body).display") == "block"
    card.get_by_test_id("snapshots").locator("summary").click()
    expect(card.get_by_test_id("take-snapshot")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "nothing sticks out sideways"
    expect(card.get_by_test_id("appliance-size")).to_have_text("1 vCPU, 1.5 GiB memory, 8 GiB disk")


def test_export_shows_its_progress_then_a_download_of_the_archive(browser: Browser, settings, tmp_path):
    settings.ARCHIVE_DIR = str(tmp_path / "archives")
    page = browser.page
    sign_up(browser, "Ex Port")
    appliance = appliance_of("Ex Port")
    finish_jobs(appliance, Status.STOPPED)
    row = page.get_by_test_id("appliance")
    expect(row.get_by_test_id("appliance-status")).to_have_text("stopped")
    expect(row.get_by_test_id("download-archive")).to_have_count(0)

    row.get_by_test_id("action-export").click()
    expect(page.get_by_test_id("appliances-status")).to_contain_text("Exporting “web”")
    expect(row.get_by_test_id("appliance-job")).to_contain_text("export: pending")
    expect(row.get_by_test_id("action-start")).to_be_disabled()

    # The host's worker reports progress (the card looks again while a job runs) ...
    def progress():
        Operation.objects.filter(appliance=appliance, kind="export").update(status="running", progress=57)

    off_the_page_loop(progress)
    expect(row.get_by_test_id("appliance-progress")).to_have_text("57 %")

    # ... and finishes: the card offers the archive.
    def finish():
        from appliances.models import Archive

        body = b"an archive"
        path = tmp_path / "archive.tar.gz"
        path.write_bytes(body)
        Archive.objects.create(appliance=appliance, path=str(path), size=len(body), sha256="ab" * 32,
                               consistency="stopped")
        Operation.objects.filter(appliance=appliance, kind="export").update(status="succeeded", progress=100)

    off_the_page_loop(finish)
    link = row.get_by_test_id("download-archive")
    expect(link).to_contain_text("Download archive (10\u00a0bytes")
    expect(link).to_have_attribute("href", f"/api/meshnet/appliances/{appliance.pk}/archive")
    with page.expect_download() as download:
        link.click()
    assert download.value.suggested_filename == f"appliance-{appliance.pk}.tar.gz"
    assert open(download.value.path(), "rb").read() == b"an archive"
