"""The libvirt driver for appliances.

A pure driver over libvirt-python: no Django, no models. It runs in the
Celery worker on the VM's host, so local paths (disks, serial logs, kernels)
are paths on the machine that runs both this code and the libvirt daemon.

`domain_xml` is the one place that writes domain XML. Every other function
takes a connection and a domain UUID (the appliance's stable identity), is
idempotent where a retried job step needs it, and turns libvirt's errors into
`HypervisorError`s that say what we were doing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import threading
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import libvirt
import libvirt_qemu

METADATA_NS = "https://infrasim.dev/xmlns/appliance/1"
METADATA_PREFIX = "infrasim"
GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"

# q35 boots sooner under TCG. Measured here (Debian 12 cloud kernel, 1 vCPU,
# 512 MiB, from start to cloud-init's "finished", medians of 6-7 boots on a
# noisy shared host): q35 40.6 s, pc 46.6 s. q35 has no IDE: the seed is a
# SATA (AHCI) drive.
MACHINE = "q35"
# The seed is a read-only virtio disk: Debian's cloud kernel has no SATA
# (AHCI) driver built in, and cloud-init finds the `cidata` label on any
# block device. snapshot='no': internal snapshots cover the qcow2 only.
SEED_BUS, SEED_DEV = "virtio", "vdb"

# Under TCG `max` gives the guest every feature QEMU emulates, RDRAND among
# them: the kernel's RNG was ready at 0.0 s, against 3.3-4.5 s with qemu64
# (and 7.9-11.5 s with qemu64 and no virtio RNG); boot times were the same
# within the noise. Under KVM the guest gets the host CPU that the
# acceleration probe booted.
TCG_CPU_MODE = "maximum"
KVM_CPU_MODE = "host-passthrough"

# writeback, not none: every appliance on a host is a linked clone of a few
# base images, and only the host page cache lets them share the base's
# blocks (O_DIRECT makes each VM read its own copy from disk). Guest flushes
# still reach the disk, as with any drive that has a volatile write cache,
# and block migration copies the disk, so libvirt needs no cache=none for
# safety.
DISK_CACHE = "writeback"

STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting-down",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}

_XML_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")
_MAC = re.compile(r"(?:[0-9a-f]{2}:){5}[0-9a-f]{2}\Z")


class HypervisorError(Exception):
    """What we were doing, and what libvirt, QEMU or qemu-img answered."""


@contextmanager
def _doing(what: str) -> Iterator[None]:
    try:
        yield
    except libvirt.libvirtError as exc:
        raise HypervisorError(f"{what}: {exc.get_error_message() or exc}") from exc


def _code(exc: libvirt.libvirtError) -> int:
    return exc.get_error_code()


# --- Domain XML -------------------------------------------------------------------------------


def mac_for(uuid: str) -> str:
    """A locally administered MAC in QEMU's 52:54:00 range, the same for the
    same UUID on every host (the guest's network config keys on it)."""
    digest = hashlib.sha256(uuidlib.UUID(uuid).bytes).digest()
    return "52:54:00:" + ":".join(f"{byte:02x}" for byte in digest[:3])


@dataclass(frozen=True)
class DomainSpec:
    name: str
    uuid: str
    title: str
    vcpus: int
    memory_mib: int
    accel: str
    disk: str
    seed_iso: str | None
    serial_log: str
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    mac: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        uuidlib.UUID(self.uuid)
        if self.accel not in ("kvm", "tcg"):
            raise ValueError(f"accel must be 'kvm' or 'tcg', not {self.accel!r}")
        if self.vcpus < 1 or self.memory_mib < 16:
            raise ValueError(f"{self.vcpus} vCPUs and {self.memory_mib} MiB cannot run a guest")
        if not self.kernel and (self.initrd or self.cmdline):
            raise ValueError("an initrd or a kernel command line needs a kernel")
        if self.mac is not None and not _MAC.match(self.mac):
            raise ValueError(f"{self.mac!r} is not a lower-case MAC address")
        for key in self.metadata:
            if not _XML_NAME.match(key):
                raise ValueError(f"metadata key {key!r} is not an XML attribute name")

    @property
    def mac_address(self) -> str:
        return self.mac or mac_for(self.uuid)


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def domain_xml(spec: DomainSpec) -> str:
    """The domain definition of `spec`: headless, its serial console on a pty
    and in `spec.serial_log`, user-mode networking (each VM behind its own
    NAT, so tenants' VMs cannot reach one another through the host), the
    guest agent's channel, and a virtio RNG."""
    domain = ET.Element("domain", type="kvm" if spec.accel == "kvm" else "qemu")
    _sub(domain, "name", spec.name)
    _sub(domain, "uuid", str(uuidlib.UUID(spec.uuid)))
    _sub(domain, "title", spec.title)
    if spec.metadata:
        metadata = _sub(domain, "metadata")
        _sub(metadata, f"{METADATA_PREFIX}:appliance", **{f"xmlns:{METADATA_PREFIX}": METADATA_NS, **spec.metadata})
    _sub(domain, "memory", str(spec.memory_mib), unit="MiB")
    _sub(domain, "vcpu", str(spec.vcpus))

    os_element = _sub(domain, "os")
    _sub(os_element, "type", "hvm", arch="x86_64", machine=MACHINE)
    if spec.kernel:
        _sub(os_element, "kernel", spec.kernel)
        if spec.initrd:
            _sub(os_element, "initrd", spec.initrd)
        if spec.cmdline:
            _sub(os_element, "cmdline", spec.cmdline)
    else:
        _sub(os_element, "boot", dev="hd")
    # With no video device, SeaBIOS's screen reaches the serial log only
    # through the serial graphics adapter.
    _sub(os_element, "bios", useserial="yes")

    features = _sub(domain, "features")
    _sub(features, "acpi")  # the power button of a clean shutdown
    _sub(features, "apic")
    _sub(features, "vmport", state="off")
    if spec.accel == "kvm":
        _sub(domain, "cpu", mode=KVM_CPU_MODE, check="none", migratable="on")
    else:
        _sub(domain, "cpu", mode=TCG_CPU_MODE, check="none")
    clock = _sub(domain, "clock", offset="utc")
    _sub(clock, "timer", name="rtc", tickpolicy="catchup")
    _sub(clock, "timer", name="pit", tickpolicy="delay")
    _sub(clock, "timer", name="hpet", present="no")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")
    pm = _sub(domain, "pm")
    _sub(pm, "suspend-to-mem", enabled="no")
    _sub(pm, "suspend-to-disk", enabled="no")

    devices = _sub(domain, "devices")
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type="qcow2", cache=DISK_CACHE, discard="unmap")
    _sub(disk, "source", file=spec.disk)
    _sub(disk, "target", dev="vda", bus="virtio")
    if spec.seed_iso:
        seed = _sub(devices, "disk", type="file", device="disk", snapshot="no")
        _sub(seed, "driver", name="qemu", type="raw")
        _sub(seed, "source", file=spec.seed_iso)
        _sub(seed, "target", dev=SEED_DEV, bus=SEED_BUS)
        _sub(seed, "readonly")
    # No USB devices, so no controller polling for them under TCG.
    _sub(devices, "controller", type="usb", model="none")
    interface = _sub(devices, "interface", type="user")
    _sub(interface, "mac", address=spec.mac_address)
    _sub(interface, "model", type="virtio")
    _sub(interface, "rom", enabled="no")  # appliances never boot from the network
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "log", file=spec.serial_log, append="on")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    channel = _sub(devices, "channel", type="unix")
    _sub(channel, "source", mode="bind")
    _sub(channel, "target", type="virtio", name=GUEST_AGENT_CHANNEL)
    # No balloon: appliances keep the memory they were given, and a memory
    # dump then holds all of it rather than pages a balloon handed back.
    _sub(devices, "memballoon", model="none")
    # Entropy for sshd and cloud-init where the CPU has no RDRAND.
    rng = _sub(devices, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")

    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode") + "\n"


# --- Connections and lookups ------------------------------------------------------------------


def _silence_default_error_printer(_context: object, _error: object) -> None:
    """libvirt prints every error to stderr unless a handler is set; ours
    reach the caller as exceptions, with what we were doing."""


@contextmanager
def connection(uri: str) -> Iterator[libvirt.virConnect]:
    """A connection for one job's calls, closed after them."""
    conn = connect(uri)
    try:
        yield conn
    finally:
        conn.close()


def connect(uri: str) -> libvirt.virConnect:
    libvirt.registerErrorHandler(_silence_default_error_printer, None)
    with _doing(f"connecting to {uri}"):
        return libvirt.open(uri)


def _find(conn: libvirt.virConnect, uuid: str) -> libvirt.virDomain | None:
    try:
        return conn.lookupByUUIDString(uuid)
    except libvirt.libvirtError as exc:
        if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise HypervisorError(f"looking for domain {uuid}: {exc.get_error_message()}") from exc


def _require(conn: libvirt.virConnect, uuid: str) -> libvirt.virDomain:
    domain = _find(conn, uuid)
    if domain is None:
        raise HypervisorError(f"no domain {uuid} on {conn.getURI()}")
    return domain


def _state(domain: libvirt.virDomain) -> str:
    state, _reason = domain.state()
    return STATES.get(state, "nostate")


# --- Disks ------------------------------------------------------------------------------------


def _qemu_img(*args: str, timeout: float = 120) -> str:
    try:
        result = subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HypervisorError(f"qemu-img {args[0]}: {exc}") from exc
    if result.returncode != 0:
        raise HypervisorError(f"qemu-img {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def image_info(path: Path, image_format: str | None = None) -> dict:
    """qemu-img's view of an image; -U, because running guests hold it."""
    fmt = ["-f", image_format] if image_format else []
    return json.loads(_qemu_img("info", "-U", "--output=json", *fmt, str(path)))


def create_overlay(*, backing: Path, backing_format: str, path: Path, size_bytes: int) -> None:
    """A qcow2 linked clone of `backing` at `path`, owned like its directory
    (the host's storage may belong to its libvirt daemon's Unix user).
    Idempotent: an overlay already there on the same backing is kept, since
    it holds the guest's disk."""
    backing = backing.absolute()
    base_size = image_info(backing, backing_format)["virtual-size"]
    if size_bytes < base_size:
        raise HypervisorError(
            f"a {size_bytes} byte disk cannot hold its {base_size} byte image {backing.name}; ask for more"
        )
    if path.exists():
        existing = image_info(path)
        if existing.get("format") != "qcow2" or existing.get("full-backing-filename") != str(backing):
            raise HypervisorError(f"{path} exists and is not an overlay on {backing}")
        return
    _create_qcow2(path, size_bytes, "-F", backing_format, "-b", str(backing))


def _create_qcow2(path: Path, size_bytes: int, *options: str) -> None:
    """`qemu-img create` of a qcow2 under a temporary name, owned like its
    directory and private to that owner, then renamed into place: a crash
    leaves no half-made disk at `path`."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        _qemu_img("create", "-q", "-f", "qcow2", *options, str(temporary), str(size_bytes))
        owner = path.parent.stat()
        os.chown(temporary, owner.st_uid, owner.st_gid)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def flatten(source: Path, target: Path, *, force_share: bool = False,
            on_progress: Callable[[float], None] | None = None) -> int:
    """A standalone qcow2 copy of `source` and its backing chain at `target`
    (only allocated clusters are written, so it is as sparse as the data);
    returns its virtual size. In-order writes (qemu-img's default) make the
    same input give the same bytes. `force_share` reads an image a running
    QEMU holds open (only sound while the guest is paused)."""
    command = ["qemu-img", "convert", "-p", "-O", "qcow2", *(["-U"] if force_share else []), str(source), str(target)]
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        raise HypervisorError(f"qemu-img convert: {exc}") from exc
    # -p writes "    (12.34/100%)\r" as it goes.
    pending = b""
    while chunk := process.stdout.read1(4096):
        pending += chunk
        *done, pending = re.split(rb"[\r\n]", pending)
        for line in reversed(done):
            match = re.search(rb"\(([0-9.]+)/100%\)", line)
            if match and on_progress:
                on_progress(float(match.group(1)))
                break
    stderr = process.stderr.read().decode(errors="replace").strip()
    if process.wait() != 0:
        target.unlink(missing_ok=True)
        raise HypervisorError(f"qemu-img convert {source.name}: {stderr}")
    return int(image_info(target, "qcow2")["virtual-size"])


def create_blank(path: Path, size_bytes: int) -> None:
    """An empty standalone qcow2, owned like its directory: a migration's
    target for a disk that has no base image."""
    _create_qcow2(path, size_bytes)


def resize(path: Path, size_bytes: int) -> None:
    _qemu_img("resize", "-q", "-f", "qcow2", str(path), str(size_bytes))


@dataclass
class Pause:
    """What `paused()` did: whether the guest's filesystems were frozen
    first (by its agent), and how long the guest stood still."""

    frozen: bool = False
    started_at: float = 0.0
    paused_ms: int = 0


@contextmanager
def paused(conn: libvirt.virConnect, uuid: str, *, freeze_timeout: int = 10) -> Iterator[Pause]:
    """The guest stands still for the block: its filesystems are frozen
    through the agent when it answers (so what is on disk is what the
    guest's applications wrote), then the vCPUs stop; pausing makes QEMU
    flush its own caches to the image. Always resumed and thawed after."""
    domain = _require(conn, uuid)
    pause = Pause()
    if guest_ping(conn, uuid, timeout=min(freeze_timeout, 5)):
        try:
            domain.fsFreeze(None, 0)
            pause.frozen = True
        except libvirt.libvirtError:
            pause.frozen = False  # an agent without fsfreeze: still crash-consistent
    # A guest someone paused already stays paused afterwards.
    was_paused = domain.state()[0] == libvirt.VIR_DOMAIN_PAUSED
    try:
        if not was_paused:
            with _doing(f"pausing {domain.name()}"):
                domain.suspend()
        pause.started_at = time.time()
        started = time.monotonic()
        try:
            yield pause
        finally:
            if not was_paused:
                with _doing(f"resuming {domain.name()}"):
                    domain.resume()
            pause.paused_ms = int((time.monotonic() - started) * 1000)
    finally:
        if pause.frozen:
            try:
                domain.fsThaw(None, 0)
            except libvirt.libvirtError:
                pass  # thawed already (the agent restarted), or gone


# --- Lifecycle --------------------------------------------------------------------------------


def define_and_start(conn: libvirt.virConnect, xml: str) -> libvirt.virDomain:
    """Define the domain (or refresh the definition of a stopped one with the
    same UUID) and start it. Running already: left as it is."""
    root = ET.fromstring(xml)
    uuid, name = root.findtext("uuid"), root.findtext("name")
    domain = _find(conn, uuid)
    if domain is not None and domain.isActive():
        return domain
    # VALIDATE: libvirt checks the XML against its schema instead of
    # silently dropping what it does not know.
    with _doing(f"defining domain {name}"):
        domain = conn.defineXMLFlags(xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
    _start(domain)
    return domain


def _start(domain: libvirt.virDomain) -> None:
    try:
        domain.create()
    except libvirt.libvirtError as exc:
        if not domain.isActive():  # not a race with another start
            raise HypervisorError(f"starting domain {domain.name()}: {exc.get_error_message()}") from exc


def domain_state(conn: libvirt.virConnect, uuid: str) -> str | None:
    domain = _find(conn, uuid)
    if domain is None:
        return None
    with _doing(f"reading the state of {uuid}"):
        return _state(domain)


def start(conn: libvirt.virConnect, uuid: str) -> None:
    domain = _require(conn, uuid)
    if not domain.isActive():
        _start(domain)


def _destroy(domain: libvirt.virDomain) -> None:
    try:
        domain.destroy()
    except libvirt.libvirtError as exc:
        if domain.isActive():
            raise HypervisorError(f"powering off {domain.name()}: {exc.get_error_message()}") from exc


def force_off(conn: libvirt.virConnect, uuid: str) -> None:
    domain = _require(conn, uuid)
    if domain.isActive():
        _destroy(domain)


# The guest agent first, then the ACPI power button if no agent answers:
# a minimal Debian without dbus runs no systemd-logind, and nothing in it
# listens to the button (measured with the appliance image).
_POLITE_SHUTDOWN = libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT | libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN
_POLITE_REBOOT = libvirt.VIR_DOMAIN_REBOOT_GUEST_AGENT | libvirt.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN


def shutdown(conn: libvirt.virConnect, uuid: str, *, timeout: float) -> str:
    """Ask the guest to power off, wait up to `timeout` seconds, then pull
    the plug. Returns "clean" or "forced"."""
    domain = _require(conn, uuid)
    if not domain.isActive():
        return "clean"
    try:
        domain.shutdownFlags(_POLITE_SHUTDOWN)
    except libvirt.libvirtError as exc:
        if not domain.isActive():
            return "clean"
        raise HypervisorError(f"shutting down {domain.name()}: {exc.get_error_message()}") from exc
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not domain.isActive():
            return "clean"
        time.sleep(0.2)
    _destroy(domain)
    return "forced"


def reboot(conn: libvirt.virConnect, uuid: str) -> None:
    """Ask the guest to reboot (its operating system shuts down first)."""
    domain = _require(conn, uuid)
    with _doing(f"rebooting {domain.name()}"):
        domain.reboot(_POLITE_REBOOT)


def undefine(conn: libvirt.virConnect, uuid: str) -> None:
    """Power off and forget the domain, with its snapshot metadata and
    firmware variables; nothing to do when it is gone already."""
    domain = _find(conn, uuid)
    if domain is None:
        return
    flags = (
        libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
        | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    )
    try:
        if domain.isActive():
            _destroy(domain)
        domain.undefineFlags(flags)
    except libvirt.libvirtError as exc:
        if _code(exc) != libvirt.VIR_ERR_NO_DOMAIN:
            raise HypervisorError(f"undefining {uuid}: {exc.get_error_message()}") from exc


# --- Snapshots --------------------------------------------------------------------------------


def _writable_disks(domain_root: ET.Element) -> list[ET.Element]:
    return [
        disk for disk in domain_root.iterfind("devices/disk")
        if disk.get("device", "disk") == "disk" and disk.find("readonly") is None
    ]


def snapshot_support(conn: libvirt.virConnect, uuid: str) -> dict:
    """What snapshots this domain can have here. libvirt 9.0 reverts only
    internal snapshots (qcow2): with the memory state when the guest runs
    (QEMU's savevm, the guest pauses while its RAM is written), disk only
    when it is off. It cannot take an internal disk-only snapshot of a
    running guest."""
    domain = _require(conn, uuid)
    with _doing(f"reading the definition of {uuid}"):
        root = ET.fromstring(domain.XMLDesc(0))
        active = domain.isActive()
    for disk in _writable_disks(root):
        driver = disk.find("driver")
        fmt = driver.get("type") if driver is not None else "raw"
        if fmt != "qcow2":
            target = disk.find("target").get("dev")
            return {"disk": False, "memory": False,
                    "reason": f"disk {target} is {fmt}; internal snapshots need qcow2"}
    loader = root.find("os/loader")
    if loader is not None and loader.get("type") == "pflash":
        return {"disk": False, "memory": False,
                "reason": "UEFI firmware variables (pflash) cannot be saved in an internal snapshot"}
    if active:
        return {"disk": True, "memory": True,
                "reason": "internal qcow2 snapshot with the running guest's memory; the guest pauses while it is saved"}
    return {"disk": True, "memory": False,
            "reason": "the guest is off: an internal qcow2 snapshot of its disk; start it to include memory"}


def _snapshot_info(snapshot: libvirt.virDomainSnapshot) -> dict:
    root = ET.fromstring(snapshot.getXMLDesc(0))
    memory = root.find("memory")
    return {
        "name": root.findtext("name"),
        "description": root.findtext("description") or "",
        "created": int(root.findtext("creationTime") or 0),
        "state": root.findtext("state"),
        "memory": memory is not None and memory.get("snapshot") == "internal",
    }


def snapshot_create(conn: libvirt.virConnect, uuid: str, name: str, description: str = "") -> dict:
    domain = _require(conn, uuid)
    for existing in snapshot_list(conn, uuid):
        if existing["name"] == name:
            return existing
    request = ET.Element("domainsnapshot")
    _sub(request, "name", name)
    if description:
        _sub(request, "description", description)
    with _doing(f"taking snapshot {name!r} of {domain.name()}"):
        snapshot = domain.snapshotCreateXML(ET.tostring(request, encoding="unicode"), 0)
        return _snapshot_info(snapshot)


def snapshot_list(conn: libvirt.virConnect, uuid: str) -> list[dict]:
    """Oldest first."""
    domain = _require(conn, uuid)
    with _doing(f"listing the snapshots of {domain.name()}"):
        snapshots = [_snapshot_info(snapshot) for snapshot in domain.listAllSnapshots(0)]
    return sorted(snapshots, key=lambda info: (info["created"], info["name"]))


def _snapshot(domain: libvirt.virDomain, name: str) -> libvirt.virDomainSnapshot | None:
    try:
        return domain.snapshotLookupByName(name, 0)
    except libvirt.libvirtError as exc:
        if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
            return None
        raise HypervisorError(f"looking for snapshot {name!r}: {exc.get_error_message()}") from exc


def snapshot_revert(conn: libvirt.virConnect, uuid: str, name: str) -> None:
    """Back to the snapshot's disk, and to its memory and run state when it
    has them (a running snapshot comes back running)."""
    domain = _require(conn, uuid)
    snapshot = _snapshot(domain, name)
    if snapshot is None:
        raise HypervisorError(f"{domain.name()} has no snapshot named {name!r}")
    with _doing(f"reverting {domain.name()} to snapshot {name!r}"):
        domain.revertToSnapshot(snapshot, 0)


def snapshot_delete(conn: libvirt.virConnect, uuid: str, name: str) -> None:
    domain = _require(conn, uuid)
    snapshot = _snapshot(domain, name)
    if snapshot is not None:
        with _doing(f"deleting snapshot {name!r} of {domain.name()}"):
            snapshot.delete(0)


# --- Migration --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MigrationResult:
    duration_s: float            # the whole migrate3 call, as the client saw it
    downtime_ms: int | None      # libvirt's completed-job "downtime": source paused -> destination running
    data_total: int | None       # bytes moved, memory and disk
    memory_total: int | None
    disk_total: int | None
    progress_reports: int        # times on_progress was called
    already_there: bool = False  # a retry found the guest moved by an earlier attempt


def _with_machine_of(domain: libvirt.virDomain, dest_xml: str) -> str:
    """The destination must present the same machine to the guest: the
    source's expanded machine type (pc-i440fx-7.2, not the alias `pc`,
    whose meaning depends on the destination's QEMU)."""
    source_type = ET.fromstring(domain.XMLDesc(0)).find("os/type")
    dest = ET.fromstring(dest_xml)
    dest_type = dest.find("os/type")
    if source_type is not None and dest_type is not None and source_type.get("machine"):
        dest_type.set("machine", source_type.get("machine"))
    return ET.tostring(dest, encoding="unicode")


def _with_disk_copy(domain: libvirt.virDomain, disks: list[str], stats: dict) -> dict:
    """libvirt 9.0 reports no disk figures while QEMU copies the disks
    (NBD mirror jobs, before the memory moves); the block jobs know them."""
    if stats.get("disk_total"):
        return stats
    total = processed = 0
    for target in disks:
        try:
            job = domain.blockJobInfo(target, 0)
        except libvirt.libvirtError:
            continue
        if job:
            total, processed = total + job["end"], processed + job["cur"]
    if total:
        stats.update(disk_total=total, disk_processed=processed, disk_remaining=total - processed)
        for key, value in (("data_total", total), ("data_processed", processed), ("data_remaining", total - processed)):
            stats[key] = stats.get(key, 0) + value
    return stats


def migrate(*, source_uri: str, dest_uri: str, uuid: str, dest_xml: str, migration_uri: str,
            on_progress: Callable[[dict], None] | None = None, poll_interval: float = 0.25,
            full_disk: bool = False) -> MigrationResult:
    """Live block migration between hosts that share no storage.

    The destination already holds the guest's base image, the caller has
    made an empty overlay on it and the seed ISO at the paths in `dest_xml`,
    and QEMU copies the overlay's data (NON_SHARED_INC). A failed attempt
    leaves copied blocks in that overlay: make it again before retrying.
    Client-driven (this process talks to both daemons; session sockets are
    private to their user, so a daemon cannot reach the other itself).
    Retried after a success (the guest runs on the destination and is gone
    from the source), it returns at once with `already_there`.

    migrate3 runs in a thread; this thread polls the source's job stats and
    calls `on_progress(stats)`, so the callback runs where the caller does
    (Django's connections are per thread). If the callback raises, the
    migration is aborted and the error propagates."""
    # A standalone disk (an imported archive's) has no base image on the
    # destination: the whole disk goes (NON_SHARED_DISK) into a blank one.
    flags = (
        libvirt.VIR_MIGRATE_LIVE
        | libvirt.VIR_MIGRATE_PERSIST_DEST
        | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
        | (libvirt.VIR_MIGRATE_NON_SHARED_DISK if full_disk else libvirt.VIR_MIGRATE_NON_SHARED_INC)
    )
    source, dest = connect(source_uri), connect(dest_uri)
    try:
        domain = _find(source, uuid)
        if domain is None:
            moved = _find(dest, uuid)
            if moved is not None and moved.isActive() and moved.isPersistent():
                return MigrationResult(duration_s=0.0, downtime_ms=None, data_total=None, memory_total=None,
                                       disk_total=None, progress_reports=0, already_there=True)
            raise HypervisorError(f"no domain {uuid} on {source_uri} to migrate, nor running on {dest_uri}")
        name = domain.name()
        with _doing(f"reading {name} on {source_uri}"):
            xml = _with_machine_of(domain, dest_xml)
        params = {
            libvirt.VIR_MIGRATE_PARAM_URI: migration_uri,
            libvirt.VIR_MIGRATE_PARAM_DEST_XML: xml,
            libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: xml,
        }
        listen = urlsplit(migration_uri).hostname
        if listen:
            # The destination's incoming migration and NBD server listen on
            # the migration address only, not on every interface.
            params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = listen
        disks = [disk.find("target").get("dev") for disk in _writable_disks(ET.fromstring(domain.XMLDesc(0)))]
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["domain"] = domain.migrate3(dest, params, flags)
            except libvirt.libvirtError as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=run, name=f"migrate-{name}", daemon=True)
        reports = disk_seen = 0
        started = time.monotonic()
        worker.start()
        try:
            while worker.is_alive():
                worker.join(poll_interval)
                if on_progress is None or not worker.is_alive():
                    continue
                try:
                    stats = domain.jobStats(0)
                except libvirt.libvirtError:
                    continue  # the job is between phases or just ended
                if stats.get("type") in (libvirt.VIR_DOMAIN_JOB_BOUNDED, libvirt.VIR_DOMAIN_JOB_UNBOUNDED):
                    progress = _with_disk_copy(domain, disks, {k: v for k, v in stats.items() if k != "type"})
                    disk_seen = max(disk_seen, progress.get("disk_total") or 0)
                    on_progress(progress)
                    reports += 1
        except BaseException:
            try:
                domain.abortJob()
            except libvirt.libvirtError:
                pass
            worker.join()
            raise
        duration = time.monotonic() - started
        if "error" in outcome:
            exc = outcome["error"]
            raise HypervisorError(f"migrating {name} to {dest_uri}: {exc.get_error_message()}") from exc
        with _doing(f"reading the migration statistics of {name} on {dest_uri}"):
            completed = outcome["domain"].jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        # libvirt 9.0's completed stats count memory only; the disk bytes
        # are what the polls saw the mirror jobs copy (None if none did).
        disk_total = completed.get("disk_total") or disk_seen or None
        memory_total = completed.get("memory_total")
        return MigrationResult(
            duration_s=duration,
            downtime_ms=completed.get("downtime"),
            data_total=(memory_total or 0) + (disk_total or 0) if memory_total or disk_total else None,
            memory_total=memory_total,
            disk_total=disk_total,
            progress_reports=reports,
        )
    finally:
        source.close()
        dest.close()


# --- Guest agent ------------------------------------------------------------------------------

_AGENT_SILENT = (
    libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
    libvirt.VIR_ERR_AGENT_UNSYNCED,
    libvirt.VIR_ERR_OPERATION_INVALID,  # the domain is not running
)


def _agent(domain: libvirt.virDomain, command: dict, timeout: int) -> dict:
    with _doing(f"asking the guest agent of {domain.name()} to {command['execute']}"):
        return json.loads(libvirt_qemu.qemuAgentCommand(domain, json.dumps(command), timeout, 0))


def guest_booted(conn: libvirt.virConnect, uuid: str, *, timeout: float = 5) -> str | None:
    """The running kernel's boot id (new on every boot) once the guest's
    init says the boot is over (systemd: `running` or `degraded`), else
    None. The agent answers early in a boot, and its channel can drop while
    units still start, so an answer alone does not make a guest ready."""
    try:
        if not guest_ping(conn, uuid, timeout=int(max(1, timeout))):
            return None
        script = "cat /proc/sys/kernel/random/boot_id; systemctl is-system-running || true"
        code, out, _ = guest_exec(conn, uuid, ["sh", "-c", script], timeout=timeout)
    except HypervisorError:
        return None
    lines = out.split()
    if code != 0 or len(lines) < 2 or lines[1] not in ("running", "degraded"):
        return None
    return lines[0]


def guest_ping(conn: libvirt.virConnect, uuid: str, *, timeout: int = 5) -> bool:
    """Whether the guest agent answers; False also for a guest that is not
    running. An unreachable daemon or a missing domain still raises."""
    domain = _require(conn, uuid)
    try:
        libvirt_qemu.qemuAgentCommand(domain, json.dumps({"execute": "guest-ping"}), timeout, 0)
    except libvirt.libvirtError as exc:
        if _code(exc) in _AGENT_SILENT:
            return False
        raise HypervisorError(f"pinging the guest agent of {domain.name()}: {exc.get_error_message()}") from exc
    return True


def guest_exec(conn: libvirt.virConnect, uuid: str, argv: list[str], *, timeout: float = 30) -> tuple[int, str, str]:
    """Run `argv` in the guest through its agent; (exit code, stdout,
    stderr). A signal shows as 128 + its number, as in a shell."""
    if not argv:
        raise ValueError("guest_exec needs a program to run")
    domain = _require(conn, uuid)
    deadline = time.monotonic() + timeout

    def remaining() -> int:
        return max(1, int(deadline - time.monotonic()))

    started = _agent(domain, {"execute": "guest-exec", "arguments": {
        "path": argv[0], "arg": argv[1:], "capture-output": True,
    }}, remaining())
    pid = started["return"]["pid"]
    while True:
        status = _agent(domain, {"execute": "guest-exec-status", "arguments": {"pid": pid}}, remaining())["return"]
        if status.get("exited"):
            break
        if time.monotonic() > deadline:
            raise HypervisorError(f"{argv[0]} still runs in {domain.name()} after {timeout} s")
        time.sleep(0.05)
    code = status["exitcode"] if "exitcode" in status else 128 + status.get("signal", 0)

    def text(key: str) -> str:
        return base64.b64decode(status.get(key, "")).decode("utf-8", "replace")

    return code, text("out-data"), text("err-data")


# --- Host -------------------------------------------------------------------------------------

PROBE_TIMEOUT_S = 30
_KERNEL_REACHED = ("Kernel panic", "Run /nonexistent as init process", "Failed to execute /nonexistent")
_KVM_FAILURES = re.compile(r"KVM internal error|emulation failure|failed to set MSR[^\n]*|Assertion[^\n]*|kvm[^\n]*error[^\n]*",
                           re.IGNORECASE)


def _kvm_device_note() -> str:
    try:
        device = os.stat("/dev/kvm")
    except FileNotFoundError:
        return "there is no /dev/kvm"
    mode = stat.S_IMODE(device.st_mode)
    note = f"/dev/kvm is mode {mode:04o}"
    if not mode & 0o066:
        note += ", so only root can use KVM and a session daemon of another user runs TCG"
    return note


def detect_acceleration(conn: libvirt.virConnect, *, kernel: Path | None, initrd: Path | None) -> tuple[str, str]:
    """("kvm", detail) only when libvirt offers KVM here and a probe boot of
    `kernel` under KVM gets into the kernel proper (it panics for want of
    an init, which proves it ran); otherwise ("tcg", why)."""
    try:
        capabilities = ET.fromstring(conn.getDomainCapabilities(None, "x86_64", None, "kvm", 0))
    except libvirt.libvirtError as exc:
        return "tcg", f"libvirt offers no KVM on this host ({exc.get_error_message()}); {_kvm_device_note()}"
    emulator = capabilities.findtext("path") or shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
    if kernel is None:
        return "tcg", "libvirt offers KVM, but there is no kernel to probe it with; TCG until a probe boot succeeds"
    command = [
        emulator, "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults", "-display", "none",
        "-serial", "stdio", "-no-reboot", "-kernel", str(kernel),
        "-append", "console=ttyS0 panic=-1 rdinit=/nonexistent",
    ]
    if initrd is not None:
        command[-2:-2] = ["-initrd", str(initrd)]
    try:
        probe = subprocess.run(command, capture_output=True, text=True, errors="replace",
                               stdin=subprocess.DEVNULL, timeout=PROBE_TIMEOUT_S, check=False)
        output, how = probe.stdout + probe.stderr, f"exit status {probe.returncode}"
    except subprocess.TimeoutExpired as exc:
        output = _text(exc.stdout) + _text(exc.stderr)
        how = f"no panic within {PROBE_TIMEOUT_S} s"
    if "Linux version" in output and any(marker in output for marker in _KERNEL_REACHED):
        return "kvm", f"a probe boot of {kernel.name} under KVM reached the kernel proper"
    failures = list(dict.fromkeys(match.group(0).strip() for match in _KVM_FAILURES.finditer(output)))
    symptom = "; ".join(failures) if failures else (output.strip().splitlines() or ["no output"])[-1][:300]
    return "tcg", f"libvirt offers KVM, but a probe boot of {kernel.name} under KVM failed ({how}): {symptom}"


def _text(data: str | bytes | None) -> str:
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return data or ""


def _version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


def host_facts(conn: libvirt.virConnect) -> dict:
    with _doing(f"reading the facts of {conn.getURI()}"):
        model, memory_mib, cpus, *_ = conn.getInfo()
        capabilities = ET.fromstring(conn.getCapabilities())
        return {
            "hostname": conn.getHostname(),
            "uri": conn.getURI(),
            "libvirt_version": _version(conn.getLibVersion()),
            "hypervisor": conn.getType(),
            "qemu_version": _version(conn.getVersion()),
            "arch": model,
            "cpus": cpus,
            "memory_mib": memory_mib,
            "host_uuid": capabilities.findtext("host/uuid"),
        }


def _metadata(domain: libvirt.virDomain) -> dict[str, str]:
    try:
        element = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS, 0)
    except libvirt.libvirtError as exc:
        if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            return {}
        raise
    return dict(ET.fromstring(element).attrib)


def list_domains(conn: libvirt.virConnect) -> list[dict]:
    """Every domain on the host, with our metadata ({} on others')."""
    listed = []
    with _doing(f"listing the domains of {conn.getURI()}"):
        domains = conn.listAllDomains(0)
    for domain in domains:
        try:
            listed.append({
                "uuid": domain.UUIDString(),
                "name": domain.name(),
                "state": _state(domain),
                "metadata": _metadata(domain),
            })
        except libvirt.libvirtError as exc:
            if _code(exc) != libvirt.VIR_ERR_NO_DOMAIN:  # undefined while we listed
                raise HypervisorError(f"reading domain {domain.name()}: {exc.get_error_message()}") from exc
    return listed
