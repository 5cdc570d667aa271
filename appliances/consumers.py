"""/ws/appliances/<id>/console: an appliance's serial console, live.

This is the one place a web process talks to libvirt. The domain is found by
the appliance's UUID on its host's libvirt URI and its console is opened as
a blocking libvirt stream: a thread of its own reads it and hands the bytes
to the event loop; the page's keystrokes reach the stream from a worker
thread (asyncio.to_thread), so no libvirt call ever blocks the loop.

Binary frames carry terminal bytes both ways. The server's one text frame,
{"kind": "attached"}, says the console is open. Every other outcome is a
close code (4000-4999) with a short reason that the page shows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable

import libvirt
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from appliances import hypervisor
from appliances.models import Appliance
from forensics import ledger
from infrasim_site.consumers import CLOSE_BAD_FRAME, CLOSE_UNAUTHENTICATED

log = logging.getLogger(__name__)

CLOSE_NOT_FOUND = 4404
CLOSE_NOT_RUNNING = 4409
CLOSE_ENDED = 4410
CLOSE_HOST_UNREACHABLE = 4503

# A keystroke is a few bytes and xterm.js sends a paste as one message, which
# the page splits into frames of at most this size.
INPUT_FRAME_MAX = 4096
READ_CHUNK = 16 * 1024
# How long the reader waits for the loop to take a chunk before it gives up
# on a socket that no longer drains.
DELIVERY_TIMEOUT_S = 30
READER_JOIN_TIMEOUT_S = 10


class NotRunning(Exception):
    """The domain does not exist on its host, or it is not running."""


class SerialConsole:
    """A running domain's serial console, as a blocking libvirt stream.

    FORCE: opening it takes the console over from any other session (that
    session's stream fails), so a tab that died cannot lock its owner out."""

    def __init__(self, conn: libvirt.virConnect, stream: libvirt.virStream):
        self._conn = conn
        self._stream = stream
        self._closing = threading.Event()

    @classmethod
    def open(cls, uri: str, uuid: str) -> SerialConsole:
        conn = hypervisor.connect(uri)
        try:
            domain = conn.lookupByUUIDString(uuid)
            if not domain.isActive():
                raise NotRunning()
            stream = conn.newStream(0)
            domain.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        except libvirt.libvirtError as exc:
            conn.close()
            # No such domain, or it stopped between the check and the open.
            if exc.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
                raise NotRunning() from None
            raise hypervisor.HypervisorError(f"opening the console of {uuid}: {exc.get_error_message()}") from exc
        except NotRunning:
            conn.close()
            raise
        return cls(conn, stream)

    def pump(self, deliver: Callable[[bytes], None]) -> str:
        """Read until the stream ends, handing each chunk to `deliver`.
        Returns why it ended: "closed" (we closed it), "stopped" (the
        domain's console reached its end) or "dropped" (the stream failed:
        another session took the console over, or the host went away)."""
        while True:
            try:
                chunk = self._stream.recv(READ_CHUNK)
            except libvirt.libvirtError:
                return "closed" if self._closing.is_set() else "dropped"
            if not chunk:
                return "closed" if self._closing.is_set() else "stopped"
            deliver(chunk)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            sent = self._stream.send(bytes(view))
            view = view[sent:]

    def abort(self) -> None:
        """Ends the stream; a pump blocked in recv returns at once."""
        self._closing.set()
        try:
            self._stream.abort()
        except libvirt.libvirtError:
            pass  # it had ended already

    def close(self) -> None:
        self._stream = None
        self._conn.close()


ENDINGS = {
    "stopped": "The appliance stopped.",
    "dropped": "The console was opened elsewhere, or its host dropped it.",
    "stalled": "The console stopped: this page did not keep up with it.",
}


def _visible_appliance(user, appliance_id: int) -> Appliance | None:
    return Appliance.objects.visible_to(user).select_related("host").filter(pk=appliance_id).first()


def _record_attached(user, appliance: Appliance) -> None:
    ledger.record(kind="appliances.appliance.console_opened", actor=ledger.actor_label(user),
                  subject=f"appliance:{appliance.pk}", payload={"host": appliance.host.name})


class SerialConsoleConsumer(AsyncWebsocketConsumer):
    console: SerialConsole | None = None
    reader: threading.Thread | None = None

    async def connect(self):
        # Accept first, then close with a code: the page learns why (a refused
        # handshake looks like a network error) and whether retrying helps.
        await self.accept()
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED, reason="Sign in first.")
            return
        appliance_id = self.scope["url_route"]["kwargs"]["appliance_id"]
        appliance = await database_sync_to_async(_visible_appliance)(user, appliance_id)
        if appliance is None:
            await self.close(code=CLOSE_NOT_FOUND, reason="No such appliance.")
            return
        try:
            self.console = await asyncio.to_thread(
                SerialConsole.open, appliance.host.libvirt_uri, str(appliance.domain_uuid)
            )
        except NotRunning:
            await self.close(code=CLOSE_NOT_RUNNING, reason=f"{appliance.name} is not running.")
            return
        except hypervisor.HypervisorError as exc:
            log.warning("console of appliance %s on %s: %s", appliance.pk, appliance.host.name, exc)
            await self.close(code=CLOSE_HOST_UNREACHABLE, reason=f"Host {appliance.host.name} cannot be reached."[:120])
            return
        await database_sync_to_async(_record_attached)(user, appliance)
        try:
            await self.send(text_data=json.dumps({"kind": "attached"}))
        except OSError:  # the page left while the console opened: disconnect() closes it
            return
        loop = asyncio.get_running_loop()
        self.reader = threading.Thread(
            target=self._read, args=(loop,), name=f"serial-console-{appliance.pk}", daemon=True
        )
        self.reader.start()

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        """The reader thread. Waiting for each send keeps memory bounded: a
        page that reads slowly slows the stream down instead of queueing."""

        def deliver(chunk: bytes) -> None:
            asyncio.run_coroutine_threadsafe(self.send(bytes_data=chunk), loop).result(DELIVERY_TIMEOUT_S)

        try:
            ending = self.console.pump(deliver)
        except Exception:  # the socket closed, the loop went away, or the page stopped reading
            log.debug("serial console: delivery stopped", exc_info=True)
            ending = "stalled"
        if ending in ENDINGS:
            try:
                asyncio.run_coroutine_threadsafe(self._ended(ending), loop)
            except RuntimeError:
                pass  # the loop is closed: the server is stopping

    async def _ended(self, ending: str) -> None:
        await self.close(code=CLOSE_ENDED, reason=ENDINGS[ending])

    async def receive(self, text_data=None, bytes_data=None):
        if bytes_data is None or len(bytes_data) > INPUT_FRAME_MAX:
            await self.close(code=CLOSE_BAD_FRAME, reason="bad frame")
            return
        if self.console is None or not bytes_data:
            return
        try:
            await asyncio.to_thread(self.console.write, bytes_data)
        except libvirt.libvirtError:
            pass  # the stream ended; the reader reports why

    async def disconnect(self, code):
        if self.console is not None:
            await asyncio.to_thread(self._shut)

    def _shut(self) -> None:
        self.console.abort()
        if self.reader is not None:
            self.reader.join(READER_JOIN_TIMEOUT_S)
        self.console.close()
        self.console = None
