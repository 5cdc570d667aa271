"""Memory acquisition from a running libvirt/QEMU domain, hashed while it is produced.

The bytes flow QEMU -> pipe -> libvirt's iohelper -> a FIFO -> this process,
which hashes every byte as it arrives and writes it to `<destination>.partial`.
When the stream has ended and its layout agrees with what QEMU reports, the
file is fsynced and renamed to `destination`. Nothing is read twice.

Why libvirt's own dump (virDomainCoreDumpWithFormat, memory only) into a FIFO,
and not our QMP `dump-guest-memory` on a pipe passed with
qemuMonitorCommandWithFiles: the passing works, but Debian's libvirt 9.0
dereferences the current job in qemuProcessHandleDumpCompleted before it checks
that there is a job. The DUMP_COMPLETED event of a dump that libvirt did not
start therefore kills the daemon with SIGSEGV, taking its guests with it
(measured here: libvirtd died at the end of the first such dump). Inside
libvirt's own dump job the event is expected. libvirt then sends QEMU the
commands in `_qmp_commands`, as its debug log shows.

No Django here: this runs in the worker on the VM's host, next to the daemon.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import queue
import re
import select
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from fcntl import F_GETFL, F_SETFL, F_SETPIPE_SZ, fcntl
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import libvirt
import libvirt_qemu

from appliances.hypervisor import STATES, HypervisorError, _doing, _require, _version

# What QEMU can write into a pipe: ELF, and kdump in makedumpfile's flattened
# form. Not `kdump-raw-*`, which seeks, nor `win-dmp`, which QEMU writes
# only for Windows guests.
PIPE_FORMATS = {
    "elf": libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_RAW,
    "kdump-zlib": libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_KDUMP_ZLIB,
    "kdump-lzo": libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_KDUMP_LZO,
    "kdump-snappy": libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_KDUMP_SNAPPY,
}
_FORMAT_NAMES = {
    fmt: next(name for name in dir(libvirt) if name.startswith("VIR_DOMAIN_CORE_DUMP_FORMAT_")
              and getattr(libvirt, name) == value)
    for fmt, value in PIPE_FORMATS.items()
}

# iohelper writes 1 MiB at a time; a FIFO of that size (the most Linux grants
# by default) takes one whole while the reader is busy.
CHUNK = 1 << 20
BUFFERS = 8
_BLOCK = 4096  # O_DIRECT's alignment: no device here has larger logical blocks
POLL_INTERVAL_S = 0.25
# How long a job already running on the domain (an earlier dump, a
# migration) may keep us waiting.
EARLIER_JOB_WAIT_S = 120.0
# After we stop reading, libvirt's writes fail at once; its call must then
# return within this.
LIBVIRT_GRACE_S = 60.0
FIFO_PREFIX = "infrasim-dump-"

_OPERATIONS = {
    getattr(libvirt, name): name.removeprefix("VIR_DOMAIN_JOB_OPERATION_").lower().replace("_", " ")
    for name in dir(libvirt) if name.startswith("VIR_DOMAIN_JOB_OPERATION_")
}


class DumpIncomplete(HypervisorError):
    """The stream ended, but its layout or size disagrees with QEMU's account."""


class DumpCancelled(HypervisorError):
    """The caller cancelled the acquisition."""


@dataclass(frozen=True)
class DumpResult:
    path: Path
    size: int
    sha256: str
    format: str
    arguments: list[dict]       # our libvirt call, then the QMP commands libvirt sends QEMU for it
    started_at: datetime
    finished_at: datetime
    paused_from: datetime       # the guest stood still within [paused_from, paused_until]
    paused_until: datetime
    ram_bytes: int
    qemu_version: str
    libvirt_version: str
    domain_xml_sha256: str
    vm_uuid: str
    memory_total: int           # query-dump's total: the guest memory bytes in the dump


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _qmp(domain: libvirt.virDomain, command: str) -> dict:
    with _doing(f"asking QEMU of {domain.name()} for {command}"):
        reply = libvirt_qemu.qemuMonitorCommand(domain, json.dumps({"execute": command}), 0)
    return json.loads(reply)["return"]


def _running(conn: libvirt.virConnect, uuid: str) -> libvirt.virDomain:
    domain = _require(conn, uuid)
    with _doing(f"reading the state of {uuid}"):
        state = domain.state()[0]
    if state not in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED):
        raise HypervisorError(f"{domain.name()} is {STATES.get(state, 'nostate')}: "
                              "only a running guest has memory to acquire")
    return domain


def dump_formats(conn: libvirt.virConnect, uuid: str) -> list[str]:
    """The formats this domain's QEMU offers that can be written into a pipe."""
    domain = _running(conn, uuid)
    offered = _qmp(domain, "query-dump-guest-memory-capability")["formats"]
    return [fmt for fmt in offered if fmt in PIPE_FORMATS]


def _qmp_commands(fmt: str, guest_running: bool) -> list[dict]:
    """What libvirt 9.0 sends QEMU for a memory-only dump: it pauses a running
    guest itself, passes the file as the fd named `dump`, leaves out the
    format for ELF (QEMU's default), and resumes the guest afterwards."""
    dump = {"paging": False, "protocol": "fd:dump", "detach": True}
    if fmt != "elf":
        dump["format"] = fmt
    commands = [
        {"execute": "getfd", "arguments": {"fdname": "dump"}},
        {"execute": "dump-guest-memory", "arguments": dump},
    ]
    if guest_running:
        commands = [{"execute": "stop"}, *commands, {"execute": "cont"}]
    return commands


# --- The FIFO ---------------------------------------------------------------------------------


def _daemon_account(conn: libvirt.virConnect) -> tuple[int, int]:
    """The Unix user and group that the daemon opens the dump's file as. A
    session daemon (the test hosts', `make run`'s as root) owns its socket;
    the system daemon runs as root."""
    uri = conn.getURI()
    parts = urlsplit(uri)
    if parts.hostname or parts.scheme not in ("qemu", "qemu+unix"):
        raise HypervisorError(f"memory is acquired through a FIFO on this machine; {uri} is not a daemon on it")
    socket = parse_qs(parts.query).get("socket")
    if socket:
        owner = os.stat(socket[0])
        return owner.st_uid, owner.st_gid
    if parts.path == "/system":
        return 0, 0
    return os.geteuid(), os.getegid()


def _knock(fifo: Path) -> None:
    """Open and close the FIFO for reading. A daemon that opens it for
    writing while no reader has it blocks in open() holding the domain's
    lock; a reader coming and going lets that open return, and its first
    write fails."""
    try:
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
    except OSError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_stale_fifos() -> None:
    """A worker killed mid-dump leaves its FIFO's directory, named with its PID."""
    pattern = re.compile(rf"{re.escape(FIFO_PREFIX)}(\d+)-\w+")
    for entry in Path(tempfile.gettempdir()).glob(f"{FIFO_PREFIX}*"):
        match = pattern.fullmatch(entry.name)
        try:
            mine = entry.lstat().st_uid == os.geteuid() and entry.is_dir() and not entry.is_symlink()
        except OSError:
            continue
        if match and mine and not _alive(int(match.group(1))):
            _knock(entry / "memory")
            shutil.rmtree(entry, ignore_errors=True)


@contextmanager
def _fifo(conn: libvirt.virConnect) -> Iterator[Path]:
    """A FIFO only the daemon's Unix user may open (and root, which reads it),
    in a directory only that user's group may pass through."""
    uid, gid = _daemon_account(conn)
    directory = Path(tempfile.mkdtemp(prefix=f"{FIFO_PREFIX}{os.getpid()}-"))
    try:
        fifo = directory / "memory"
        os.mkfifo(fifo, 0o600)
        if uid != os.geteuid():
            try:
                os.chown(directory, os.geteuid(), gid)
                os.chmod(directory, 0o710)
                os.chown(fifo, uid, gid)
            except PermissionError as exc:
                raise HypervisorError(f"the daemon runs as uid {uid}, and handing it a FIFO needs root: {exc}") from exc
        yield fifo
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# --- Layout checks ----------------------------------------------------------------------------

_PN_XNUM = 0xFFFF
_PT_LOAD = 1
_SHT_NULL, _SHT_NOBITS = 0, 8
_ELF_HEADER = 64
_SECTION_HEADER = 64
# A core's headers are a few KiB; a stream that claims more is not a core.
_MAX_ELF_HEADERS = 16 << 20


class _ElfLayout:
    """An ELF64 core's headers, taken from the start of the stream: where its
    last segment or section ends, and what its PT_LOAD segments hold. QEMU
    7.2 puts its section headers after the ELF header and the section names
    (.shstrtab, 11 bytes) after the last segment, so the file ends with a
    section rather than a segment."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.needed = _ELF_HEADER

    def feed(self, chunk: memoryview) -> None:
        while len(self.head) < self.needed and chunk:
            take = self.needed - len(self.head)
            self.head += chunk[:take]
            chunk = chunk[take:]
            if len(self.head) == self.needed:
                self.needed = self._headers_end()

    def _endian(self) -> str | None:
        head = self.head
        if len(head) < _ELF_HEADER or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] not in (1, 2):
            return None
        return "<" if head[5] == 1 else ">"

    def _fields(self, endian: str) -> tuple[int, int, int, int, int, int] | None:
        """(phoff, phentsize, phnum, shoff, shentsize, shnum) with ELF's
        extended numbering (counts too large for the header are in section
        0), or None while section 0 is still to come."""
        phoff, shoff = struct.unpack_from(endian + "QQ", self.head, 32)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(endian + "HHHH", self.head, 54)
        if phnum == _PN_XNUM or (shnum == 0 and shoff):
            if len(self.head) < shoff + _SECTION_HEADER:
                return None
            size, _link, info = struct.unpack_from(endian + "QII", self.head, shoff + 32)
            phnum = info if phnum == _PN_XNUM else phnum
            shnum = size if shnum == 0 else shnum
        return phoff, phentsize, phnum, shoff, shentsize, shnum

    def _headers_end(self) -> int:
        endian = self._endian()
        if endian is None:
            return len(self.head)
        fields = self._fields(endian)
        if fields is None:
            end = struct.unpack_from(endian + "Q", self.head, 40)[0] + _SECTION_HEADER
        else:
            phoff, phentsize, phnum, shoff, shentsize, shnum = fields
            end = max(phoff + phnum * phentsize, shoff + shnum * shentsize if shoff else 0)
        return min(max(end, len(self.head)), _MAX_ELF_HEADERS)

    def problems(self, size: int, qemu: dict) -> list[str]:
        endian = self._endian()
        if endian is None:
            return ["the stream does not start with an ELF64 header"]
        fields = self._fields(endian)
        if fields is None or len(self.head) < self.needed or self.needed == _MAX_ELF_HEADERS:
            return ["the ELF headers are cut short, or not at the start of the stream"]
        phoff, phentsize, phnum, shoff, shentsize, shnum = fields
        if phentsize < 56 or (shoff and shentsize < _SECTION_HEADER):
            return [f"ELF program or section headers of {phentsize} and {shentsize} bytes are too small"]
        end, loads = len(self.head), 0
        for index in range(phnum):
            p_type, _flags, offset, _vaddr, _paddr, filesz = struct.unpack_from(
                endian + "IIQQQQ", self.head, phoff + index * phentsize)
            end = max(end, offset + filesz)
            if p_type == _PT_LOAD:
                loads += filesz
        for index in range(shnum if shoff else 0):
            _name, sh_type, _flags, _addr, offset, sh_size = struct.unpack_from(
                endian + "IIQQQQ", self.head, shoff + index * shentsize)
            if sh_type not in (_SHT_NULL, _SHT_NOBITS):
                end = max(end, offset + sh_size)
        found = []
        if size != end:
            found.append(f"the file has {size} bytes, but its segments and sections end at byte {end}")
        if loads != qemu.get("total"):
            found.append(f"the PT_LOAD segments hold {loads} bytes, but QEMU dumped {qemu.get('total')}")
        return found


_FLAT_HEADER = 4096
_FLAT_SIGNATURE = b"makedumpfile".ljust(16, b"\0")
_FLAT_RECORD = struct.Struct(">qq")


class _FlatKdumpLayout:
    """makedumpfile's flattened format: a 4096-byte header (signature, type 1,
    version 1), then records of (offset, size) as big-endian int64 followed
    by `size` bytes, ended by a record of (-1, -1)."""

    def __init__(self) -> None:
        self.header = bytearray()
        self.position = 0
        self.next_record = _FLAT_HEADER
        self.pending = bytearray()  # a record header split between chunks
        self.ended_at: int | None = None
        self.malformed: str | None = None

    def feed(self, chunk: memoryview) -> None:
        start, end = self.position, self.position + len(chunk)
        self.position = end
        if len(self.header) < _FLAT_HEADER:
            self.header += chunk[:_FLAT_HEADER - len(self.header)]
        while self.ended_at is None and self.malformed is None:
            header_from = self.next_record + len(self.pending)
            if header_from >= end:
                return
            index = header_from - start
            self.pending += chunk[index:index + _FLAT_RECORD.size - len(self.pending)]
            if len(self.pending) < _FLAT_RECORD.size:
                return
            offset, size = _FLAT_RECORD.unpack(self.pending)
            self.pending.clear()
            if offset == -1 and size == -1:
                self.ended_at = self.next_record + _FLAT_RECORD.size
            elif offset < 0 or size < 0:
                self.malformed = f"the record at byte {self.next_record} claims offset {offset} and size {size}"
            else:
                self.next_record += _FLAT_RECORD.size + size

    def problems(self, size: int, qemu: dict) -> list[str]:
        if len(self.header) < _FLAT_HEADER or bytes(self.header[:16]) != _FLAT_SIGNATURE:
            return ["the stream does not start with makedumpfile's flat header"]
        kind, version = _FLAT_RECORD.unpack_from(self.header, 16)
        if (kind, version) != (1, 1):
            return [f"the flat header has type {kind} and version {version}, not 1 and 1"]
        if self.malformed:
            return [self.malformed]
        if self.ended_at is None:
            return ["the stream ended without makedumpfile's end marker"]
        if self.ended_at != size:
            return [f"{size - self.ended_at} bytes follow the end marker"]
        return []


def _layout_for(fmt: str) -> _ElfLayout | _FlatKdumpLayout:
    return _ElfLayout() if fmt == "elf" else _FlatKdumpLayout()


# --- Receiving --------------------------------------------------------------------------------


class _Receiver:
    """Three threads, so that reading, hashing and storing overlap (on two
    cores, hashing in the reading thread left QEMU waiting). The reader
    fills 1 MiB buffers from the FIFO, the hasher hashes them in order and
    shows them to the layout check, the writer stores them and returns them
    to the reader. On `stop` the reader closes the FIFO, which makes the
    daemon's writes fail and so ends the dump.

    The file is written with O_DIRECT where the filesystem allows: a
    buffered write copies every byte into the page cache (CPU the hasher
    needs) and leaves the whole dump dirty for the final fsync. The last
    buffer is padded to the block size and the file truncated back."""

    def __init__(self, fifo_fd: int, file_fd: int, layout: _ElfLayout | _FlatKdumpLayout):
        self.fifo_fd, self.file_fd, self.layout = fifo_fd, file_fd, layout
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.ended = False  # the daemon closed the FIFO, and every byte is in the file and fsynced
        self.error: OSError | None = None
        self.stop = threading.Event()
        self._free: queue.Queue[mmap.mmap] = queue.Queue()
        for _ in range(BUFFERS):
            self._free.put(mmap.mmap(-1, CHUNK))  # page-aligned, as O_DIRECT needs
        self._to_hash: queue.Queue[tuple[mmap.mmap, int] | None] = queue.Queue()
        self._to_write: queue.Queue[tuple[mmap.mmap, int] | None] = queue.Queue()
        self._stream_ended = False
        self._threads = [threading.Thread(target=target, name=f"memory-dump-{role}", daemon=True)
                         for role, target in (("reader", self._read), ("hasher", self._hash), ("writer", self._write))]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _read(self) -> None:
        # The FIFO is non-blocking so that `stop` is seen within the poll's
        # 0.1 s; poll, unlike read, waits for the first writer.
        poller = select.poll()
        poller.register(self.fifo_fd, select.POLLIN)
        try:
            while not self.stop.is_set():
                try:
                    buffer = self._free.get(timeout=0.1)
                except queue.Empty:
                    continue
                filled = self._fill(buffer, poller)
                if filled:
                    self._to_hash.put((buffer, filled))
                if self._stream_ended or filled < CHUNK:
                    break
        except OSError as exc:
            self._fail(exc)
        finally:
            os.close(self.fifo_fd)
            self._to_hash.put(None)

    def _fill(self, buffer: mmap.mmap, poller: select.poll) -> int:
        """Reads until the buffer is full, the writer closes the FIFO, or stop."""
        view = memoryview(buffer)
        filled = 0
        while filled < CHUNK and not self.stop.is_set():
            if not poller.poll(100):
                continue
            try:
                count = os.readv(self.fifo_fd, [view[filled:]])
            except BlockingIOError:
                continue
            if count == 0:
                self._stream_ended = True
                break
            filled += count
        return filled

    def _hash(self) -> None:
        while (item := self._to_hash.get()) is not None:
            buffer, filled = item
            chunk = memoryview(buffer)[:filled]
            self.sha256.update(chunk)
            self.layout.feed(chunk)
            self.size += filled
            self._to_write.put(item)
        self._to_write.put(None)

    def _write(self) -> None:
        offset = 0
        while (item := self._to_write.get()) is not None:
            buffer, filled = item
            if self.error is None:
                try:
                    self._store(buffer, filled, offset)
                except OSError as exc:
                    self._fail(exc)
            offset += filled
            self._free.put(buffer)
        if self.error is None and self._stream_ended:
            try:
                os.ftruncate(self.file_fd, offset)
                os.fsync(self.file_fd)
                self.ended = True
            except OSError as exc:
                self._fail(exc)

    def _store(self, buffer: mmap.mmap, filled: int, offset: int) -> None:
        length = filled + (-filled % _BLOCK)
        buffer[filled:length] = bytes(length - filled)
        view = memoryview(buffer)[:length]
        written = 0
        while written < length:
            written += os.pwrite(self.file_fd, view[written:], offset + written)

    def _fail(self, exc: OSError) -> None:
        if self.error is None:
            self.error = exc
        self.stop.set()


def _open_partial(path: Path) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | os.O_DIRECT)
    except OSError:
        pass  # a filesystem without O_DIRECT (tmpfs before Linux 6.6): buffered, and slower
    return fd


# --- Acquisition ------------------------------------------------------------------------------


def _busy_with(domain: libvirt.virDomain) -> str | None:
    with _doing(f"reading the jobs of {domain.name()}"):
        job = domain.jobStats(0)
    if job.get("type", libvirt.VIR_DOMAIN_JOB_NONE) != libvirt.VIR_DOMAIN_JOB_NONE:
        return f"a libvirt {_OPERATIONS.get(job.get('operation'), 'unknown')} job"
    dump = _qmp(domain, "query-dump")
    if dump["status"] == "active":
        return f"a memory dump QEMU reports at {dump['completed']} of {dump['total']} bytes"
    return None


def _wait_for_other_jobs(domain: libvirt.virDomain, cancel: threading.Event | None) -> None:
    """A dump left by a killed worker ends by itself once its reader is gone
    (its writes fail); a migration or another caller's dump ends too. Wait
    for it, up to EARLIER_JOB_WAIT_S."""
    deadline = time.monotonic() + EARLIER_JOB_WAIT_S
    while (busy := _busy_with(domain)) is not None:
        if cancel is not None and cancel.is_set():
            raise DumpCancelled(f"the memory dump of {domain.name()} was cancelled while it waited for {busy}")
        if time.monotonic() > deadline:
            raise HypervisorError(f"{domain.name()} is still busy with {busy} after {EARLIER_JOB_WAIT_S:.0f} s; "
                                  "acquire its memory when that has ended")
        time.sleep(POLL_INTERVAL_S)


def _ensure_running(domain: libvirt.virDomain) -> None:
    """libvirt resumes the guest when its dump ends, also a failed one; a
    guest still paused after that is resumed here."""
    with _doing(f"resuming {domain.name()} after its memory dump"):
        if domain.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
            domain.resume()


def _widen(fifo_fd: int) -> None:
    try:
        fcntl(fifo_fd, F_SETPIPE_SZ, CHUNK)
    except OSError:
        pass  # above /proc/sys/fs/pipe-max-size for this user: 64 KiB reads are slower, not wrong


def acquire(conn: libvirt.virConnect, uuid: str, *, destination: Path, fmt: str = "elf",
            on_progress: Callable[[int], None] | None = None,
            cancel: threading.Event | None = None) -> DumpResult:
    """Dump the guest's memory to `destination`, hashing it on the way.

    On any failure, cancellation or exception from `on_progress` (which runs
    in the caller's thread), the partial file is removed, the guest runs
    again if it ran before, and the error says what happened. `fmt` must be
    one of `dump_formats()`; any other raises ValueError."""
    destination = Path(destination)
    partial = destination.with_name(destination.name + ".partial")
    # First, before anything waits on the domain's lock: a killed worker's
    # FIFO may hold the daemon in open().
    _sweep_stale_fifos()
    domain = _running(conn, uuid)
    name = domain.name()
    offered = dump_formats(conn, uuid)
    if fmt not in offered:
        raise ValueError(f"{fmt!r} is not a memory dump format the QEMU of {name} can write into a pipe; "
                         f"choose one of: {', '.join(offered)}")
    if cancel is not None and cancel.is_set():
        raise DumpCancelled(f"the memory dump of {name} was cancelled before it began")

    started_at = _utcnow()
    with _doing(f"reading the definition of {name}"):
        xml = domain.XMLDesc(0)
        ram_bytes = domain.maxMemory() * 1024
        libvirt_version = _version(conn.getLibVersion())
    qemu = _qmp(domain, "query-version")
    qemu_version = "{major}.{minor}.{micro}".format(**qemu["qemu"])
    if qemu.get("package"):
        qemu_version += f" ({qemu['package']})"
    _wait_for_other_jobs(domain, cancel)

    with _doing(f"reading the state of {name}"):
        was_running = domain.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    partial.unlink(missing_ok=True)
    acquired = False
    try:
        with _fifo(conn) as fifo:
            fifo_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            try:
                _widen(fifo_fd)
                file_fd = _open_partial(partial)
            except OSError:
                os.close(fifo_fd)
                raise
            receiver = _Receiver(fifo_fd, file_fd, _layout_for(fmt))
            try:
                outcome = _dump(domain, fifo, fmt, receiver, on_progress, cancel)
            finally:
                os.close(file_fd)
        if was_running:
            _ensure_running(domain)
        qemu_dump = _qmp(domain, "query-dump")
        size = _verify(name, partial, receiver, qemu_dump)
        os.replace(partial, destination)
        _fsync_directory(destination.parent)
        acquired = True
    finally:
        if not acquired:
            partial.unlink(missing_ok=True)
            if was_running:
                _ensure_running(domain)
    if on_progress is not None:
        on_progress(100)
    return DumpResult(
        path=destination, size=size, sha256=receiver.sha256.hexdigest(), format=fmt,
        arguments=[
            {"libvirt": "virDomainCoreDumpWithFormat", "to": "a FIFO read by this worker",
             "dumpformat": _FORMAT_NAMES[fmt], "flags": ["VIR_DUMP_MEMORY_ONLY"]},
            *_qmp_commands(fmt, was_running),
        ], started_at=started_at, finished_at=_utcnow(),
        paused_from=outcome["requested_at"], paused_until=outcome["returned_at"], ram_bytes=ram_bytes,
        qemu_version=qemu_version, libvirt_version=libvirt_version,
        domain_xml_sha256=hashlib.sha256(xml.encode()).hexdigest(), vm_uuid=domain.UUIDString(),
        memory_total=qemu_dump["total"],
    )


def _verify(name: str, partial: Path, receiver: _Receiver, qemu_dump: dict) -> int:
    """The file's size, once it holds all that QEMU says it wrote."""
    problems = [] if qemu_dump["status"] == "completed" else [f"QEMU reports the dump {qemu_dump['status']}"]
    size = partial.stat().st_size
    if size != receiver.size:
        problems.append(f"the file has {size} bytes, but {receiver.size} arrived")
    problems += receiver.layout.problems(size, qemu_dump)
    if problems:
        raise DumpIncomplete(f"the memory dump of {name} is incomplete: {'; '.join(problems)}")
    return size


def _dump(domain: libvirt.virDomain, fifo: Path, fmt: str, receiver: _Receiver,
          on_progress: Callable[[int], None] | None, cancel: threading.Event | None) -> dict:
    """libvirt's dump call runs in a thread; this one follows query-dump
    every POLL_INTERVAL_S for the progress, and stops the receiver on
    cancel. Returns when the stream has ended, with the times the call was
    made and returned: libvirt pauses the guest after the first and resumes
    it before the second, so the guest's pause lies within them, to one
    libvirt round trip (a few ms here) at either end."""
    name = domain.name()
    outcome: dict = {}

    def call() -> None:
        try:
            domain.coreDumpWithFormat(str(fifo), PIPE_FORMATS[fmt], libvirt.VIR_DUMP_MEMORY_ONLY)
        except libvirt.libvirtError as exc:
            outcome["error"] = exc
        outcome["returned_at"] = _utcnow()

    dumper = threading.Thread(target=call, name=f"memory-dump-{name}", daemon=True)
    cancelled = False
    receiver.start()
    try:
        outcome["requested_at"] = _utcnow()
        dumper.start()
        reported = -1
        while dumper.is_alive():
            dumper.join(POLL_INTERVAL_S)
            if cancel is not None and cancel.is_set():
                cancelled = True
                break
            if on_progress is None or not dumper.is_alive():
                continue
            try:
                progress = _qmp(domain, "query-dump")
            except HypervisorError:
                continue  # the dump is between steps; the next poll will tell
            if progress["status"] == "active" and progress["total"]:
                percent = min(99, progress["completed"] * 100 // progress["total"])
                if percent > reported:
                    on_progress(percent)
                    reported = percent
    finally:
        if dumper.is_alive():
            receiver.stop.set()
            _wait_for(dumper, fifo, name)
        elif "error" in outcome:
            receiver.stop.set()  # libvirt may have failed before it opened the FIFO: no end will come
        # A successful call returns once iohelper has written the last byte
        # into the FIFO and closed it: the end is there to read.
        receiver.join(LIBVIRT_GRACE_S)
    if cancelled:
        raise DumpCancelled(f"the memory dump of {name} was cancelled after {receiver.size} bytes; "
                            "its partial file is removed")
    if receiver.error is not None:
        raise HypervisorError(f"storing the memory dump of {name}: {receiver.error}") from receiver.error
    if "error" in outcome:
        exc = outcome["error"]
        raise HypervisorError(f"dumping the memory of {name}: {exc.get_error_message()}") from exc
    if not receiver.ended:
        raise DumpIncomplete(f"libvirt reports the memory dump of {name} done, but its stream did not end "
                             f"within {LIBVIRT_GRACE_S:.0f} s ({receiver.size} bytes read)")
    return outcome


def _wait_for(dumper: threading.Thread, fifo: Path, name: str) -> None:
    """Once we stopped reading, the daemon's next write fails and its call
    returns; knocking covers a daemon that had not yet opened the FIFO."""
    deadline = time.monotonic() + LIBVIRT_GRACE_S
    while dumper.is_alive():
        if time.monotonic() > deadline:
            raise HypervisorError(f"libvirt's memory dump of {name} has not ended {LIBVIRT_GRACE_S:.0f} s "
                                  "after we stopped reading it")
        _knock(fifo)
        dumper.join(0.2)


def _fsync_directory(directory: Path) -> None:
    """The rename lasts only once the directory is on disk too."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
