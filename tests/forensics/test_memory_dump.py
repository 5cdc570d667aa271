"""Memory acquisition against real libvirt and real QEMU (TCG).

The guests are diskless and have no network: SeaBIOS finds nothing to boot
and idles, which is a real running guest with real memory, up in a second.
Their memory is mostly zero pages, which QEMU dumps like any other.
"""

from __future__ import annotations

import hashlib
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest

from appliances import hypervisor
from forensics import memory_dump
from tests.hypervisors import LibvirtHosts

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20

# The worker's part, run in a process of its own so that a test can kill it
# mid-dump: one line per progress report.
WORKER = """
import sys
from pathlib import Path
from appliances import hypervisor
from forensics import memory_dump
conn = hypervisor.connect(sys.argv[1])
memory_dump.acquire(conn, sys.argv[2], destination=Path(sys.argv[3]),
                    on_progress=lambda percent: print(percent, flush=True))
"""


def diskless_domain_xml(name: str, uuid: str, memory_mib: int) -> str:
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


@dataclass
class Guest:
    uri: str
    conn: libvirt.virConnect
    uuid: str
    name: str

    @property
    def domain(self) -> libvirt.virDomain:
        return self.conn.lookupByUUIDString(self.uuid)

    def state(self) -> int:
        return self.domain.state()[0]


@pytest.fixture()
def start_guest(libvirt_hosts: LibvirtHosts):
    """Defines and starts diskless guests on the first host; undefines them after."""
    host = libvirt_hosts.first
    conn = host.connect()
    started: list[str] = []

    def start(memory_mib: int = 256, *, run: bool = True) -> Guest:
        uuid, name = str(uuidlib.uuid4()), f"infrasim-dump-{len(started)}-{os.getpid()}"
        domain = conn.defineXML(diskless_domain_xml(name, uuid, memory_mib))
        started.append(uuid)
        if run:
            domain.create()
        return Guest(uri=host.uri, conn=conn, uuid=uuid, name=name)

    yield start
    for uuid in started:
        hypervisor.undefine(conn, uuid)
    conn.close()


@pytest.fixture()
def destination(tmp_path: Path):
    """Where a dump goes; removed after the test (dumps are up to 2 GiB)."""
    path = tmp_path / "memory.dump"
    yield path
    for leftover in tmp_path.glob("memory.dump*"):
        leftover.unlink()


def partial_of(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def sha256sum(path: Path) -> str:
    return subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True).stdout.split()[0]


def readelf_layout(path: Path) -> tuple[int, int]:
    """(bytes in PT_LOAD segments, where the last segment or section ends), as binutils reads the file."""
    listing = subprocess.run(["readelf", "-lSW", str(path)], capture_output=True, text=True, check=True).stdout
    segment = re.compile(r"^\s+(LOAD|NOTE)\s+(0x[0-9a-f]+)\s+\S+\s+\S+\s+(0x[0-9a-f]+)", re.M)
    section = re.compile(r"^\s+\[\s*\d+\]\s+\.\S+\s+\S+\s+[0-9a-f]+\s+([0-9a-f]+)\s+([0-9a-f]+)", re.M)
    loads, end = 0, 0
    for kind, offset, filesz in segment.findall(listing):
        end = max(end, int(offset, 16) + int(filesz, 16))
        loads += int(filesz, 16) if kind == "LOAD" else 0
    for offset, size in section.findall(listing):
        end = max(end, int(offset, 16) + int(size, 16))
    return loads, end


def our_fifo_directories(pid: int) -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"{memory_dump.FIFO_PREFIX}{pid}-*"))


def start_worker(guest: Guest, destination: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, guest.uri, guest.uuid, str(destination)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for_progress(worker: subprocess.Popen, timeout: float = 60) -> int:
    """The first progress report above zero from the worker process."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([worker.stdout], [], [], 0.5)
        if not ready:
            continue
        line = worker.stdout.readline()
        assert line, f"the worker ended before reporting progress: {worker.stderr.read()}"
        if int(line) > 0:
            return int(line)
    raise AssertionError(f"no progress from the worker within {timeout} s")


class StateWatcher:
    """Samples a domain's state every 5 ms on a connection of its own, with the
    UTC times between which each sample was taken."""

    def __init__(self, guest: Guest):
        self.conn = hypervisor.connect(guest.uri)
        self.domain = self.conn.lookupByUUIDString(guest.uuid)
        self.samples: list[tuple[object, object, int]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self.done.is_set():
            before = memory_dump._utcnow()
            state = self.domain.state()[0]
            self.samples.append((before, memory_dump._utcnow(), state))
            time.sleep(0.005)

    def __enter__(self) -> StateWatcher:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()
        self.conn.close()


def test_elf_dump_is_hashed_as_it_arrives_and_matches_the_file(start_guest, destination):
    guest = start_guest(256)
    progress: list[int] = []
    with StateWatcher(guest) as watcher:
        result = memory_dump.acquire(guest.conn, guest.uuid, destination=destination, on_progress=progress.append)

    assert result.path == destination and not partial_of(destination).exists()
    assert result.sha256 == sha256sum(destination)
    assert result.size == destination.stat().st_size
    assert oct(destination.stat().st_mode & 0o777) == oct(0o600)
    loads, end = readelf_layout(destination)
    assert loads == result.memory_total >= 256 * MIB
    assert end == result.size
    assert result.format == "elf" and result.ram_bytes == 256 * MIB and result.vm_uuid == guest.uuid
    assert result.domain_xml_sha256 == hashlib.sha256(guest.domain.XMLDesc(0).encode()).hexdigest()
    assert result.libvirt_version == hypervisor._version(guest.conn.getLibVersion())
    assert result.qemu_version.startswith(hypervisor._version(guest.conn.getVersion()))
    assert result.arguments[0]["libvirt"] == "virDomainCoreDumpWithFormat"
    dump_command = next(command for command in result.arguments if command.get("execute") == "dump-guest-memory")
    assert dump_command["arguments"]["paging"] is False and dump_command["arguments"]["protocol"] == "fd:dump"

    assert progress and progress[-1] == 100
    assert progress == sorted(set(progress)) and all(0 <= percent <= 100 for percent in progress)

    assert result.started_at <= result.paused_from < result.paused_until <= result.finished_at
    paused = [(before, after) for before, after, state in watcher.samples if state == libvirt.VIR_DOMAIN_PAUSED]
    assert paused, "the watcher never saw the guest paused"
    assert all(after >= result.paused_from and before <= result.paused_until for before, after in paused)
    assert guest.state() == libvirt.VIR_DOMAIN_RUNNING


def test_kdump_format_offered_by_qemu_is_listed_and_written_flattened(start_guest, destination):
    guest = start_guest(256)
    offered = memory_dump._qmp(guest.domain, "query-dump-guest-memory-capability")["formats"]
    formats = memory_dump.dump_formats(guest.conn, guest.uuid)

    assert "elf" in formats and "win-dmp" not in formats
    assert not any(fmt.startswith("kdump-raw") for fmt in formats)
    kdump = [fmt for fmt in offered if fmt in ("kdump-zlib", "kdump-lzo", "kdump-snappy")]
    assert kdump and set(kdump) <= set(formats)

    result = memory_dump.acquire(guest.conn, guest.uuid, destination=destination, fmt=kdump[0])
    data = destination.read_bytes()
    assert result.format == kdump[0] and result.sha256 == hashlib.sha256(data).hexdigest() == sha256sum(destination)
    assert data[:16] == b"makedumpfile".ljust(16, b"\0") and data[16:32] == (1).to_bytes(8, "big") * 2
    assert data[-16:] == b"\xff" * 16
    assert len(data) < result.memory_total  # compressed: the guest's memory is mostly zero pages
    assert guest.state() == libvirt.VIR_DOMAIN_RUNNING


def test_format_qemu_cannot_write_into_a_pipe_is_refused(start_guest, destination):
    guest = start_guest(256)
    for fmt in ("win-dmp", "kdump-raw-zlib", "raw"):
        with pytest.raises(ValueError, match=r"choose one of: elf, kdump-zlib"):
            memory_dump.acquire(guest.conn, guest.uuid, destination=destination, fmt=fmt)
    assert not destination.exists() and not partial_of(destination).exists()
    assert guest.state() == libvirt.VIR_DOMAIN_RUNNING


def test_guest_that_is_not_running_has_no_memory_to_acquire(start_guest, destination):
    guest = start_guest(256, run=False)
    with pytest.raises(hypervisor.HypervisorError, match="is shutoff"):
        memory_dump.acquire(guest.conn, guest.uuid, destination=destination)
    assert not partial_of(destination).exists()


def test_full_disk_fails_the_dump_with_the_reason_and_leaves_nothing_behind(start_guest, tmp_path):
    guest = start_guest(256)
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(small)], check=True)
    try:
        with pytest.raises(hypervisor.HypervisorError, match="storing the memory dump .*No space left on device"):
            memory_dump.acquire(guest.conn, guest.uuid, destination=small / "memory.dump")
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)
    assert not our_fifo_directories(os.getpid())
    assert guest.state() == libvirt.VIR_DOMAIN_RUNNING


def test_cancelling_mid_dump_removes_the_partial_file_and_the_next_acquire_succeeds(start_guest, destination):
    guest = start_guest(2048)
    cancel = threading.Event()
    seen: list[int] = []

    def cancel_once_started(percent: int) -> None:
        seen.append(percent)
        if percent > 0:
            cancel.set()

    with pytest.raises(memory_dump.DumpCancelled, match="cancelled after [0-9]+ bytes"):
        memory_dump.acquire(guest.conn, guest.uuid, destination=destination, on_progress=cancel_once_started,
                            cancel=cancel)
    assert seen and 0 < seen[-1] < 100
    assert not destination.exists() and not partial_of(destination).exists()
    assert not our_fifo_directories(os.getpid())
    assert guest.state() == libvirt.VIR_DOMAIN_RUNNING

    result = memory_dump.acquire(guest.conn, guest.uuid, destination=destination)
    assert result.sha256 == sha256sum(destination) and result.memory_total >= 2048 * MIB
    assert guest.state() == libvirt.VIR_DOMAIN_RUNNING


def test_worker_killed_mid_dump_leaves_the_guest_running_and_a_retry_succeeds(start_guest, destination):
    guest = start_guest(2048)
    worker = start_worker(guest, destination)
    try:
        wait_for_progress(worker)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        worker.kill()
    assert partial_of(destination).exists()  # what a killed worker leaves

    result = memory_dump.acquire(guest.conn, guest.uuid, destination=destination)
    assert result.sha256 == sha256sum(destination)
    assert not partial_of(destination).exists()
    assert not our_fifo_directories(worker.pid)
    assert guest.state() == libvirt.VIR_DOMAIN_RUNNING


def test_dump_still_running_is_reported_then_waited_out(start_guest, destination, tmp_path, monkeypatch):
    guest = start_guest(2048)
    stalled = tmp_path / "stalled.dump"
    worker = start_worker(guest, stalled)
    try:
        wait_for_progress(worker)
        # A stopped reader: QEMU's writes block, and its dump stays in progress.
        worker.send_signal(signal.SIGSTOP)

        monkeypatch.setattr(memory_dump, "EARLIER_JOB_WAIT_S", 1.0)
        with pytest.raises(hypervisor.HypervisorError, match="still busy with a libvirt dump job after 1 s"):
            memory_dump.acquire(guest.conn, guest.uuid, destination=destination)
        assert not destination.exists() and not partial_of(destination).exists()

        monkeypatch.setattr(memory_dump, "EARLIER_JOB_WAIT_S", 60.0)
        threading.Timer(1.5, worker.kill).start()
        began = time.monotonic()
        result = memory_dump.acquire(guest.conn, guest.uuid, destination=destination)
        assert time.monotonic() - began >= 1.5
    finally:
        worker.kill()
        worker.wait(timeout=10)
        for leftover in tmp_path.glob("stalled.dump*"):
            leftover.unlink()
    assert result.sha256 == sha256sum(destination)
    assert guest.state() == libvirt.VIR_DOMAIN_RUNNING


def test_truncated_or_padded_streams_are_incomplete(start_guest, destination):
    """The completeness checks, fed a real dump's bytes with the end cut off
    or with bytes added, as a broken pipe or a confused writer would leave them."""
    guest = start_guest(64)
    elf = memory_dump.acquire(guest.conn, guest.uuid, destination=destination)
    data = destination.read_bytes()
    qemu = {"status": "completed", "total": elf.memory_total}

    def problems(body: bytes, layout, qemu_said: dict = qemu) -> list[str]:
        check = layout()
        for start in range(0, len(body), 4093):  # chunk borders anywhere: inside headers and records
            check.feed(memoryview(body)[start:start + 4093])
        return check.problems(len(body), qemu_said)

    assert problems(data, memory_dump._ElfLayout) == []
    assert "end at byte" in problems(data[:-1], memory_dump._ElfLayout)[0]
    assert "end at byte" in problems(data + b"\0", memory_dump._ElfLayout)[0]
    assert "QEMU dumped" in problems(data, memory_dump._ElfLayout, {"status": "completed", "total": 1})[0]
    assert "ELF64" in problems(data[1:], memory_dump._ElfLayout)[0]

    memory_dump.acquire(guest.conn, guest.uuid, destination=destination, fmt="kdump-zlib")
    flat = destination.read_bytes()
    assert problems(flat, memory_dump._FlatKdumpLayout) == []
    assert "without makedumpfile's end marker" in problems(flat[:-1], memory_dump._FlatKdumpLayout)[0]
    assert "follow the end marker" in problems(flat + b"\0", memory_dump._FlatKdumpLayout)[0]
    assert "flat header" in problems(b"x" + flat[1:], memory_dump._FlatKdumpLayout)[0]
