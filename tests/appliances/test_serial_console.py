"""The live serial console over /ws/appliances/<id>/console, against a real
QEMU guest (TCG) on a real session libvirtd: SeaBIOS on a blank disk writes
to the serial port and its boot menu answers the Escape key, so output and
input both show without booting an operating system."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import subprocess
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import libvirt
import pytest
import websockets
from django.test import Client
from playwright.sync_api import expect

from appliances import hypervisor
from appliances.consumers import INPUT_FRAME_MAX
from appliances.models import Appliance, Template
from forensics.models import LedgerEntry
from identity.models import User
from tests.appliances.conftest import TEMPLATE, make_host
from tests.browser import Browser, orm_access
from tests.e2e.test_passkeys_in_chromium import sign_up
from tests.hypervisors import LibvirtHost
from tests.people import client_for, person

BOOT_MENU_PROMPT = b"Press ESC for boot menu"
BOOT_MENU = b"Select boot device:"
OUTPUT_TIMEOUT_S = 30


def with_boot_menu(xml: str) -> str:
    """SeaBIOS waits 30 s for Escape, then shows its boot menu: a guest
    that answers a key without an operating system."""
    root = ET.fromstring(xml)
    ET.SubElement(root.find("os"), "bootmenu", enable="yes", timeout="30000")
    return ET.tostring(root, encoding="unicode")


@dataclass
class Guest:
    host: LibvirtHost
    uuid: str
    conn: libvirt.virConnect

    @property
    def domain(self) -> libvirt.virDomain:
        return self.conn.lookupByUUIDString(self.uuid)

    def reset(self) -> None:
        """The machine starts over, so SeaBIOS writes its banner again now
        that a console is attached."""
        self.domain.reset(0)

    def console_is_free(self) -> bool:
        """Whether a SAFE console open succeeds, which libvirt refuses while
        another console stream of the domain is open."""
        stream = self.conn.newStream(0)
        try:
            self.domain.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_SAFE)
        except libvirt.libvirtError:
            return False
        stream.abort()
        return True


@pytest.fixture(scope="module")
def defined_guest(libvirt_hosts):
    host = libvirt_hosts.first
    token = secrets.token_hex(3)
    disk = host.storage_dir / f"console-{token}.qcow2"
    serial_log = host.storage_dir / f"console-{token}.log"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    subprocess.run(["chown", f"{host.uid}:{host.gid}", str(disk)], check=True)
    spec = hypervisor.DomainSpec(
        name=f"console-test-{token}", uuid=str(uuid.uuid4()), title="serial console test", vcpus=1, memory_mib=64,
        accel="tcg", disk=str(disk), seed_iso=None, serial_log=str(serial_log),
    )
    conn = host.connect()
    try:
        hypervisor.define_and_start(conn, with_boot_menu(hypervisor.domain_xml(spec)))
        yield Guest(host, spec.uuid, conn)
    finally:
        hypervisor.undefine(conn, spec.uuid)
        conn.close()
        disk.unlink(missing_ok=True)
        serial_log.unlink(missing_ok=True)


@pytest.fixture()
def guest(defined_guest):
    """The module's guest, running (a test may have stopped it)."""
    if not defined_guest.domain.isActive():
        defined_guest.domain.create()
    return defined_guest


@pytest.fixture()
def server_errors(caplog):
    """ERROR records from the live server too: uvicorn's loggers do not
    propagate to the root logger that caplog listens on."""
    uvicorn_logger = logging.getLogger("uvicorn")
    uvicorn_logger.addHandler(caplog.handler)
    yield lambda: [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    uvicorn_logger.removeHandler(caplog.handler)


def console_appliance(owner, guest_uuid: str, *, libvirt_uri: str, name: str = "bios") -> Appliance:
    host = make_host("lab", libvirt_uri=libvirt_uri)
    return Appliance.objects.create(
        owner=owner, name=name, template=Template.objects.get(slug=TEMPLATE), host=host, vcpus=1, memory_mib=64,
        disk_gib=1, status=Appliance.Status.READY, domain_uuid=guest_uuid,
    )


def headers_for(user, live) -> dict:
    headers = {"Origin": live.url}
    if user is not None:
        headers["Cookie"] = f"sessionid={client_for(user).cookies['sessionid'].value}"
    return headers


def socket_url(live, appliance: Appliance) -> str:
    return f"{live.ws_url}/ws/appliances/{appliance.pk}/console"


async def attached(socket) -> None:
    assert json.loads(await asyncio.wait_for(socket.recv(), 20)) == {"kind": "attached"}


async def read_until(socket, marker: bytes) -> bytes:
    seen = b""
    deadline = time.monotonic() + OUTPUT_TIMEOUT_S
    while marker not in seen:
        frame = await asyncio.wait_for(socket.recv(), max(0.1, deadline - time.monotonic()))
        assert isinstance(frame, bytes), f"terminal output arrives as binary frames, not {frame!r}"
        seen += frame
    return seen


async def closed_after_output(socket, timeout: float = 20) -> websockets.frames.Close:
    """The close frame, after whatever the guest wrote last."""
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(socket.recv(), timeout)
    return closed.value.rcvd


def close_of(live, user, appliance: Appliance) -> tuple[int, str]:
    """The close code and reason the console answers `user` with at once."""
    headers = headers_for(user, live)

    async def scenario():
        async with websockets.connect(socket_url(live, appliance), additional_headers=headers) as socket:
            close = await closing(socket)
            return close.code, close.reason

    return asyncio.run(scenario())


async def closing(socket, timeout: float = 20) -> websockets.frames.Close:
    """The close frame, after asserting that no data came before it."""
    with pytest.raises(websockets.ConnectionClosed) as closed:
        frame = await asyncio.wait_for(socket.recv(), timeout)
        pytest.fail(f"expected the socket to close without data, got {frame!r}")
    return closed.value.rcvd


def reader_threads(appliance: Appliance) -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == f"serial-console-{appliance.pk}"]


def wait_for(condition, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_the_owner_sees_the_guest_write_and_the_guest_reads_the_owners_keys(live, guest, server_errors):
    alice = person("alice")
    appliance = console_appliance(alice, guest.uuid, libvirt_uri=guest.host.uri)
    headers = headers_for(alice, live)

    async def scenario():
        async with websockets.connect(socket_url(live, appliance), additional_headers=headers) as socket:
            await attached(socket)
            await asyncio.to_thread(guest.reset)
            banner = await read_until(socket, BOOT_MENU_PROMPT)
            assert b"SeaBIOS" in banner
            await socket.send(b"\x1b")
            await read_until(socket, BOOT_MENU)

    asyncio.run(scenario())
    assert wait_for(lambda: not reader_threads(appliance))
    assert server_errors() == []
    assert LedgerEntry.objects.filter(kind="appliances.appliance.console_opened", subject=f"appliance:{appliance.pk}",
                                      actor=f"user:{alice.pk}").count() == 1


def test_closing_the_socket_ends_the_reader_thread_and_releases_the_console(live, guest, server_errors):
    alice = person("alice")
    appliance = console_appliance(alice, guest.uuid, libvirt_uri=guest.host.uri)
    headers = headers_for(alice, live)

    async def scenario():
        async with websockets.connect(socket_url(live, appliance), additional_headers=headers) as socket:
            await attached(socket)
            # The reader starts right after the attached frame is sent.
            assert await asyncio.to_thread(wait_for, lambda: len(reader_threads(appliance)) == 1)
            assert not await asyncio.to_thread(guest.console_is_free), "the open console holds the domain's console"

    asyncio.run(scenario())
    assert wait_for(lambda: not reader_threads(appliance)), "the reader thread outlived its socket"
    assert wait_for(guest.console_is_free), "the console stream outlived its socket"
    assert server_errors() == []


def test_the_socket_closes_with_a_reason_when_the_appliance_stops(live, guest, server_errors):
    alice = person("alice")
    appliance = console_appliance(alice, guest.uuid, libvirt_uri=guest.host.uri)
    headers = headers_for(alice, live)

    async def scenario():
        async with websockets.connect(socket_url(live, appliance), additional_headers=headers) as socket:
            await attached(socket)
            await asyncio.to_thread(guest.domain.destroy)
            close = await closed_after_output(socket)
            assert (close.code, close.reason) == (4410, "The appliance stopped.")

    asyncio.run(scenario())
    assert wait_for(lambda: not reader_threads(appliance))
    assert server_errors() == []


def test_another_console_takes_over_and_the_first_one_is_told(live, guest, server_errors):
    alice = person("alice")
    appliance = console_appliance(alice, guest.uuid, libvirt_uri=guest.host.uri)
    headers = headers_for(alice, live)

    async def scenario():
        async with websockets.connect(socket_url(live, appliance), additional_headers=headers) as first:
            await attached(first)
            async with websockets.connect(socket_url(live, appliance), additional_headers=headers) as second:
                await attached(second)
                close = await closed_after_output(first)
                assert (close.code, close.reason) == (4410, "The console was opened elsewhere, or its host dropped it.")
                await asyncio.to_thread(guest.reset)
                await read_until(second, BOOT_MENU_PROMPT)

    asyncio.run(scenario())
    assert wait_for(lambda: not reader_threads(appliance))
    assert server_errors() == []


def test_an_operator_may_open_anyones_console(live, guest):
    alice, olga = person("alice"), person("olga", operator=True)
    appliance = console_appliance(alice, guest.uuid, libvirt_uri=guest.host.uri)
    headers = headers_for(olga, live)

    async def scenario():
        async with websockets.connect(socket_url(live, appliance), additional_headers=headers) as socket:
            await attached(socket)

    asyncio.run(scenario())
    assert LedgerEntry.objects.filter(kind="appliances.appliance.console_opened", actor=f"operator:{olga.pk}").exists()


@pytest.mark.parametrize(("who", "code"), [("other user", 4404), ("anonymous", 4401)])
def test_anyone_else_is_closed_out_without_a_byte(live, guest, who, code):
    alice = person("alice")
    appliance = console_appliance(alice, guest.uuid, libvirt_uri=guest.host.uri)
    headers = headers_for(person("mallory") if who == "other user" else None, live)

    async def scenario():
        async with websockets.connect(socket_url(live, appliance), additional_headers=headers) as socket:
            await asyncio.to_thread(guest.reset)  # output the intruder must not see
            assert (await closing(socket)).code == code

    asyncio.run(scenario())
    assert not reader_threads(appliance)
    assert guest.console_is_free()
    assert not LedgerEntry.objects.filter(kind="appliances.appliance.console_opened").exists()


def test_an_unreachable_host_is_named(live):
    alice = person("alice")
    appliance = console_appliance(alice, str(uuid.uuid4()),
                                  libvirt_uri="qemu+unix:///session?socket=/nonexistent/libvirt-sock")
    assert close_of(live, alice, appliance) == (4503, "Host lab cannot be reached.")


def test_an_appliance_without_a_domain_is_not_running(live, guest):
    alice = person("alice")
    appliance = console_appliance(alice, str(uuid.uuid4()), libvirt_uri=guest.host.uri)
    assert close_of(live, alice, appliance) == (4409, "bios is not running.")


def test_a_stopped_domain_is_not_running(live, guest):
    alice = person("alice")
    appliance = console_appliance(alice, guest.uuid, libvirt_uri=guest.host.uri)
    guest.domain.destroy()
    assert close_of(live, alice, appliance) == (4409, "bios is not running.")


@pytest.mark.parametrize("frame", [b"x" * (INPUT_FRAME_MAX + 1), "text is not terminal input"])
def test_an_oversized_or_text_input_frame_closes_the_console(live, guest, frame):
    alice = person("alice")
    appliance = console_appliance(alice, guest.uuid, libvirt_uri=guest.host.uri)
    headers = headers_for(alice, live)

    async def scenario():
        async with websockets.connect(socket_url(live, appliance), additional_headers=headers) as socket:
            await attached(socket)
            await socket.send(frame)
            assert (await closed_after_output(socket)).code == 4400

    asyncio.run(scenario())
    assert wait_for(lambda: not reader_threads(appliance))
    assert wait_for(guest.console_is_free)


def test_the_console_page_shows_the_guest_in_xterm_and_types_into_it(browser: Browser, guest):
    page = browser.page
    violations = []
    page.on("console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None)
    sign_up(browser, "Grace Hopper")
    with orm_access():
        owner = User.objects.get(display_name="Grace Hopper")
        appliance = console_appliance(owner, guest.uuid, libvirt_uri=guest.host.uri, name="bios-box")

    page.goto(f"/appliances/{appliance.pk}/console")
    state = page.get_by_test_id("console-state")
    expect(state).to_have_text("Connected to the serial console of “bios-box”.")
    rows = page.locator("#terminal .xterm-rows")
    guest.reset()
    expect(rows).to_contain_text(BOOT_MENU_PROMPT.decode(), timeout=OUTPUT_TIMEOUT_S * 1000)
    page.keyboard.press("Escape")
    expect(rows).to_contain_text(BOOT_MENU.decode(), timeout=OUTPUT_TIMEOUT_S * 1000)
    # xterm.js's own <style> elements apply (the nonce lets them in): its
    # theme's white text, not the page's dark ink.
    assert rows.evaluate("element => getComputedStyle(element).color") == "rgb(255, 255, 255)"

    guest.domain.destroy()
    expect(state).to_have_text("The appliance stopped.")
    expect(page.get_by_test_id("console-reconnect")).to_be_visible()
    assert violations == []


@pytest.mark.parametrize(("who", "status"), [("owner", 200), ("operator", 200), ("other user", 404)])
def test_the_console_page_opens_for_its_owner_and_operators_only(db, who, status):
    alice = person("alice")
    appliance = console_appliance(alice, str(uuid.uuid4()), libvirt_uri="qemu:///session")
    viewer = {"owner": alice, "operator": person("olga", operator=True), "other user": person("mallory")}[who]
    response = client_for(viewer).get(f"/appliances/{appliance.pk}/console")
    assert response.status_code == status
    if status == 200:
        assert f'data-socket="/ws/appliances/{appliance.pk}/console"' in response.content.decode()


def test_the_console_page_asks_anonymous_visitors_to_sign_in(db):
    appliance = console_appliance(person("alice"), str(uuid.uuid4()), libvirt_uri="qemu:///session")
    response = Client().get(f"/appliances/{appliance.pk}/console")
    assert response.status_code == 302 and response["Location"].startswith("/signin/")


def test_only_the_console_pages_own_style_elements_may_run(db):
    alice = person("alice")
    appliance = console_appliance(alice, str(uuid.uuid4()), libvirt_uri="qemu:///session")
    client = client_for(alice)
    first, second = (client.get(f"/appliances/{appliance.pk}/console") for _ in range(2))
    nonces = []
    for response in (first, second):
        policy = response["Content-Security-Policy"]
        nonce = re.search(r"style-src-elem 'self' 'nonce-([A-Za-z0-9_-]{20,})'$", policy).group(1)
        assert "style-src 'self';" in policy, "style attributes stay forbidden"
        assert f'nonce="{nonce}"' in response.content.decode()
        nonces.append(nonce)
    assert nonces[0] != nonces[1], "a fresh nonce for every response"
