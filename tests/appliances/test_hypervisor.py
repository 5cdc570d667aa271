"""The libvirt driver against real libvirt and real QEMU (TCG).

The guests boot no operating system: a blank overlay on a blank base image,
so SeaBIOS prints "No bootable device" on the serial console and idles. That
is a real running guest with a real disk and real memory, and it comes up in
a second, which keeps these tests fast.
"""

from __future__ import annotations

import glob
import os
import re
import secrets
import shutil
import subprocess
import time
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path

import libvirt
import libvirt_qemu
import pytest

from appliances import hypervisor
from appliances.cloudinit import write_seed_iso
from tests.hypervisors import LibvirtHost, LibvirtHosts

BASE_SIZE = 32 * 2**20
FIRMWARE_IDLE = "No bootable device"


@dataclass
class Guest:
    host: LibvirtHost
    spec: hypervisor.DomainSpec
    directory: Path

    @property
    def uuid(self) -> str:
        return self.spec.uuid

    @property
    def serial_log(self) -> Path:
        return Path(self.spec.serial_log)

    def xml(self) -> str:
        return hypervisor.domain_xml(self.spec)


@pytest.fixture(scope="module")
def blank_base(libvirt_hosts: LibvirtHosts) -> Path:
    """A blank qcow2 both hosts can read, as a cached template image is."""
    base = libvirt_hosts.images_dir / "blank.qcow2"
    if not base.exists():
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), str(BASE_SIZE)], check=True)
        os.chmod(base, 0o644)
    return base


@pytest.fixture()
def hosts(libvirt_hosts: LibvirtHosts):
    """Both hosts, emptied again after the test whatever it left."""
    yield libvirt_hosts
    libvirt_hosts.remove_all_domains()
    for host in libvirt_hosts:
        for entry in host.storage_dir.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def place_guest(host: LibvirtHost, base: Path, *, name: str | None = None, uuid: str | None = None,
                memory_mib: int = 64) -> Guest:
    """What provisioning does on a host: a directory owned by the host's
    user, a linked clone of the base, a seed ISO; and the spec that uses them."""
    name = name or f"infrasim-test-{secrets.token_hex(3)}"
    directory = host.storage_dir / name
    directory.mkdir(mode=0o750)
    shutil.chown(directory, host.uid, host.gid)
    disk, seed = directory / "disk.qcow2", directory / "seed.iso"
    hypervisor.create_overlay(backing=base, backing_format="qcow2", path=disk, size_bytes=BASE_SIZE)
    write_seed_iso(seed, user_data="#cloud-config\n{}\n", meta_data=f"instance-id: {name}\n")
    shutil.chown(seed, host.uid, host.gid)
    spec = hypervisor.DomainSpec(
        name=name, uuid=uuid or str(uuidlib.uuid4()), title=f"test guest <{name}> & co", vcpus=1,
        memory_mib=memory_mib, accel="tcg", disk=str(disk), seed_iso=str(seed),
        serial_log=str(directory / "serial.log"), metadata={"appliance": "7", "owner": "alice"},
    )
    return Guest(host, spec, directory)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s")
        time.sleep(0.1)


def serial_text(guest: Guest) -> str:
    try:
        return guest.serial_log.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def started(guest: Guest) -> libvirt.virConnect:
    """A connection to the guest's host with the guest running and its
    firmware idle (done writing to the console and the disk)."""
    conn = guest.host.connect()
    hypervisor.define_and_start(conn, guest.xml())
    wait_for(lambda: FIRMWARE_IDLE in serial_text(guest), 30, "SeaBIOS did not give up booting")
    return conn


def qemu_io(conn: libvirt.virConnect, uuid: str, command: str) -> None:
    """Run a qemu-io command on the guest's disk inside its running QEMU
    (HMP), as the guest's own writes would land, and flush it to the file.
    (qemu-io prints to QEMU's stdout, not to the monitor: the monitor only
    says when the command itself was refused.)"""
    domain = conn.lookupByUUIDString(uuid)
    # The virtio-blk device under the PCI function holds the disk's backend.
    device = "/machine/peripheral/virtio-disk0/virtio-backend"
    for step in (command, "flush"):
        refused = libvirt_qemu.qemuMonitorCommand(
            domain, f'qemu-io -d {device} "{step}"', libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
        )
        assert refused == "", f"qemu-io {step}: {refused}"


def disk_holds(path: str, pattern: int, offset: str, length: str) -> bool:
    """Whether the image file reads `pattern` there, looked at from outside
    QEMU (-U: the guest may still be running)."""
    check = subprocess.run(["qemu-io", "-U", "-r", "-f", "qcow2", "-c", f"read -P {pattern:#x} {offset} {length}", path],
                           capture_output=True, text=True, check=False)
    assert "read " in check.stdout, check.stdout + check.stderr
    return check.returncode == 0 and "verification failed" not in check.stdout


# --- Lifecycle --------------------------------------------------------------------------------


def test_defining_and_starting_twice_leaves_one_running_domain(hosts, blank_base):
    guest = place_guest(hosts.first, blank_base)
    conn = hosts.first.connect()

    hypervisor.define_and_start(conn, guest.xml())
    hypervisor.define_and_start(conn, guest.xml())

    ours = [d for d in hypervisor.list_domains(conn) if d["uuid"] == guest.uuid]
    assert ours == [{"uuid": guest.uuid, "name": guest.spec.name, "state": "running",
                     "metadata": {"appliance": "7", "owner": "alice"}}]
    assert hypervisor.domain_state(conn, guest.uuid) == "running"
    assert conn.lookupByUUIDString(guest.uuid).metadata(libvirt.VIR_DOMAIN_METADATA_TITLE, None) == guest.spec.title


def test_undefine_removes_the_domain_and_is_a_no_op_when_it_is_gone(hosts, blank_base):
    guest = place_guest(hosts.first, blank_base)
    conn = started(guest)

    hypervisor.undefine(conn, guest.uuid)

    assert hypervisor.domain_state(conn, guest.uuid) is None
    assert [d for d in hypervisor.list_domains(conn) if d["uuid"] == guest.uuid] == []
    hypervisor.undefine(conn, guest.uuid)


def test_the_serial_console_is_logged_to_the_file_the_spec_names(hosts, blank_base):
    guest = place_guest(hosts.first, blank_base)
    started(guest)

    log = serial_text(guest)
    assert "SeaBIOS (version" in log
    assert f"Machine UUID {guest.uuid}" in log
    assert guest.serial_log.stat().st_uid == hosts.first.uid  # written by the host's own virtlogd


def test_shutdown_of_a_guest_that_ignores_acpi_is_forced_after_the_timeout(hosts, blank_base):
    guest = place_guest(hosts.first, blank_base)
    conn = started(guest)

    began = time.monotonic()
    how = hypervisor.shutdown(conn, guest.uuid, timeout=2)

    assert how == "forced"
    assert time.monotonic() - began >= 2
    assert hypervisor.domain_state(conn, guest.uuid) == "shutoff"
    assert hypervisor.shutdown(conn, guest.uuid, timeout=2) == "clean"  # nothing left to stop


def test_start_and_force_off_switch_a_defined_guest(hosts, blank_base):
    guest = place_guest(hosts.first, blank_base)
    conn = started(guest)

    hypervisor.force_off(conn, guest.uuid)
    assert hypervisor.domain_state(conn, guest.uuid) == "shutoff"
    hypervisor.force_off(conn, guest.uuid)

    hypervisor.start(conn, guest.uuid)
    assert hypervisor.domain_state(conn, guest.uuid) == "running"
    hypervisor.start(conn, guest.uuid)
    assert hypervisor.domain_state(conn, guest.uuid) == "running"


def test_operations_on_a_missing_domain_say_which_one(hosts):
    conn = hosts.first.connect()
    missing = str(uuidlib.uuid4())

    with pytest.raises(hypervisor.HypervisorError, match=missing):
        hypervisor.start(conn, missing)


def test_a_guest_without_an_agent_does_not_answer_pings(hosts, blank_base):
    guest = place_guest(hosts.first, blank_base)
    conn = started(guest)

    began = time.monotonic()
    assert hypervisor.guest_ping(conn, guest.uuid, timeout=2) is False
    assert time.monotonic() - began < 5
    with pytest.raises(hypervisor.HypervisorError, match="guest agent"):
        hypervisor.guest_exec(conn, guest.uuid, ["/bin/true"], timeout=2)


# --- Disks ------------------------------------------------------------------------------------


def test_an_overlay_belongs_to_the_host_user_and_is_kept_when_made_again(hosts, blank_base):
    host = hosts.first
    directory = host.storage_dir / "overlay-test"
    directory.mkdir()
    shutil.chown(directory, host.uid, host.gid)
    disk = directory / "disk.qcow2"

    hypervisor.create_overlay(backing=blank_base, backing_format="qcow2", path=disk, size_bytes=2 * BASE_SIZE)
    first_inode = disk.stat().st_ino
    hypervisor.create_overlay(backing=blank_base, backing_format="qcow2", path=disk, size_bytes=2 * BASE_SIZE)

    info = hypervisor.image_info(disk)
    assert (info["format"], info["virtual-size"], info["full-backing-filename"]) == ("qcow2", 2 * BASE_SIZE, str(blank_base))
    assert (disk.stat().st_uid, disk.stat().st_gid) == (host.uid, host.gid)
    assert disk.stat().st_ino == first_inode
    assert sorted(p.name for p in directory.iterdir()) == ["disk.qcow2"]  # no temporary left


def test_an_overlay_smaller_than_its_image_is_refused(hosts, blank_base):
    disk = hosts.first.storage_dir / "small.qcow2"

    with pytest.raises(hypervisor.HypervisorError, match="cannot hold"):
        hypervisor.create_overlay(backing=blank_base, backing_format="qcow2", path=disk, size_bytes=BASE_SIZE // 2)
    assert not disk.exists()


def test_an_overlay_on_another_image_is_not_overwritten(hosts, blank_base, tmp_path):
    other = tmp_path / "other.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(other), str(BASE_SIZE)], check=True)
    disk = hosts.first.storage_dir / "taken.qcow2"
    hypervisor.create_overlay(backing=other, backing_format="qcow2", path=disk, size_bytes=BASE_SIZE)

    with pytest.raises(hypervisor.HypervisorError, match="not an overlay on"):
        hypervisor.create_overlay(backing=blank_base, backing_format="qcow2", path=disk, size_bytes=BASE_SIZE)
    assert hypervisor.image_info(disk)["full-backing-filename"] == str(other)


# --- Snapshots --------------------------------------------------------------------------------


def test_snapshot_with_memory_of_a_running_guest_reverts_its_disk_and_resumes_it(hosts, blank_base):
    guest = place_guest(hosts.first, blank_base)
    conn = started(guest)
    support = hypervisor.snapshot_support(conn, guest.uuid)
    assert (support["disk"], support["memory"]) == (True, True)
    assert "memory" in support["reason"]

    taken = hypervisor.snapshot_create(conn, guest.uuid, "before", "a clean disk")
    assert taken["name"] == "before" and taken["description"] == "a clean disk"
    assert (taken["state"], taken["memory"]) == ("running", True)
    assert abs(taken["created"] - time.time()) < 60
    assert hypervisor.snapshot_create(conn, guest.uuid, "before") == taken  # a retried step takes no second one

    qemu_io(conn, guest.uuid, "write -P 0x5a 0 64k")
    assert disk_holds(guest.spec.disk, 0x5A, "0", "64k")
    hypervisor.snapshot_revert(conn, guest.uuid, "before")

    assert hypervisor.domain_state(conn, guest.uuid) == "running"
    qemu_io(conn, guest.uuid, "flush")
    assert disk_holds(guest.spec.disk, 0, "0", "64k")
    # The guest resumed from the saved memory instead of booting again.
    assert serial_text(guest).count("SeaBIOS (version") == 1
    assert [s["name"] for s in hypervisor.snapshot_list(conn, guest.uuid)] == ["before"]

    hypervisor.snapshot_delete(conn, guest.uuid, "before")
    assert hypervisor.snapshot_list(conn, guest.uuid) == []
    hypervisor.snapshot_delete(conn, guest.uuid, "before")
    with pytest.raises(hypervisor.HypervisorError, match="no snapshot named 'before'"):
        hypervisor.snapshot_revert(conn, guest.uuid, "before")


def test_snapshots_of_a_stopped_guest_hold_its_disk_only(hosts, blank_base):
    guest = place_guest(hosts.first, blank_base)
    conn = started(guest)
    hypervisor.force_off(conn, guest.uuid)

    support = hypervisor.snapshot_support(conn, guest.uuid)
    taken = hypervisor.snapshot_create(conn, guest.uuid, "off")

    assert (support["disk"], support["memory"]) == (True, False)
    assert (taken["state"], taken["memory"]) == ("shutoff", False)
    hypervisor.snapshot_revert(conn, guest.uuid, "off")
    assert hypervisor.domain_state(conn, guest.uuid) == "shutoff"


# --- Migration --------------------------------------------------------------------------------


def test_live_block_migration_moves_the_running_guest_and_its_written_blocks(hosts, blank_base):
    source = place_guest(hosts.first, blank_base)
    source_conn = started(source)
    qemu_io(source_conn, source.uuid, "write -P 0x5a 1M 24M")
    assert disk_holds(source.spec.disk, 0x5A, "1M", "24M")
    # What the target's worker prepares: the same image, an empty overlay, the seed.
    target = place_guest(hosts.second, blank_base, name=source.spec.name, uuid=source.uuid)
    reports: list[dict] = []

    result = hypervisor.migrate(
        source_uri=hosts.first.uri, dest_uri=hosts.second.uri, uuid=source.uuid, dest_xml=target.xml(),
        migration_uri=f"tcp://{hosts.second.migration_address}", on_progress=reports.append, poll_interval=0.02,
    )

    target_conn = hosts.second.connect()
    assert hypervisor.domain_state(target_conn, source.uuid) == "running"
    assert hypervisor.domain_state(source_conn, source.uuid) is None
    assert result.duration_s > 0
    assert result.downtime_ms is not None and 0 <= result.downtime_ms < result.duration_s * 1000
    assert result.memory_total >= 64 * 2**20
    assert reports and result.progress_reports == len(reports)
    assert all("data_total" in report and "time_elapsed" in report for report in reports)
    copying = [report for report in reports if report["disk_total"]]
    assert copying and copying[-1]["disk_total"] == result.disk_total >= 24 * 2**20
    assert result.data_total == result.memory_total + result.disk_total
    again = hypervisor.migrate(
        source_uri=hosts.first.uri, dest_uri=hosts.second.uri, uuid=source.uuid, dest_xml=target.xml(),
        migration_uri=f"tcp://{hosts.second.migration_address}",
    )
    assert again.already_there  # a retried step after the move does not fail
    # The target keeps the guest defined (PERSIST_DEST) and its disk file holds the blocks.
    hypervisor.force_off(target_conn, source.uuid)
    assert hypervisor.domain_state(target_conn, source.uuid) == "shutoff"
    assert disk_holds(target.spec.disk, 0x5A, "1M", "24M")
    assert disk_holds(target.spec.disk, 0, "25M", "1M")  # and nothing more


# --- Host -------------------------------------------------------------------------------------


def test_host_facts_name_the_host_by_its_own_uuid(hosts):
    facts = [hypervisor.host_facts(host.connect()) for host in hosts]

    assert [f["host_uuid"] for f in facts] == [host.host_uuid for host in hosts]
    for fact in facts:
        assert fact["hypervisor"] == "QEMU" and fact["cpus"] >= 1 and fact["memory_mib"] > 0
        assert re.fullmatch(r"\d+\.\d+\.\d+", fact["libvirt_version"])
        assert re.fullmatch(r"\d+\.\d+\.\d+", fact["qemu_version"])


def test_a_session_daemon_that_cannot_open_dev_kvm_runs_tcg(hosts):
    accel, detail = hypervisor.detect_acceleration(hosts.first.connect(), kernel=None, initrd=None)

    assert accel == "tcg"
    assert "libvirt offers no KVM" in detail and "/dev/kvm is mode 0600" in detail


PROBE_KERNEL_CACHE = Path("/var/cache/infrasim/probe-kernel")


def _debian_cloud_kernel() -> Path:
    """Debian's cloud kernel, unpacked from its package (not installed)."""
    kernels = sorted(PROBE_KERNEL_CACHE.glob("boot/vmlinuz-*"))
    if kernels:
        return kernels[-1]
    depends = subprocess.run(["apt-cache", "depends", "linux-image-cloud-amd64"], capture_output=True, text=True,
                             check=True).stdout
    package = re.search(r"Depends: (linux-image-\S+)", depends).group(1)
    download = PROBE_KERNEL_CACHE.with_name(f".probe-kernel-{os.getpid()}")
    download.mkdir(parents=True)
    try:
        subprocess.run(["apt-get", "download", "-qq", package], cwd=download, capture_output=True, check=True)
        subprocess.run(["dpkg-deb", "-x", next(download.glob("*.deb")).name, "root"], cwd=download, check=True)
        os.replace(download / "root", PROBE_KERNEL_CACHE)
    finally:
        shutil.rmtree(download, ignore_errors=True)
    return sorted(PROBE_KERNEL_CACHE.glob("boot/vmlinuz-*"))[-1]


@pytest.fixture(scope="session")
def linux_kernel() -> tuple[Path, Path | None]:
    """A real Linux kernel (and initrd) for the KVM probe: the appliance
    image's, the host's own, or else Debian's cloud kernel."""
    images = sorted(glob.glob("/var/cache/infrasim/blobs/*/vmlinuz"), key=os.path.getmtime)
    if images:
        initrd = Path(images[-1]).with_name("initrd.img")
        return Path(images[-1]), initrd if initrd.exists() else None
    own = sorted(glob.glob("/boot/vmlinuz-*"))
    if own:
        initrd = Path(own[-1].replace("vmlinuz", "initrd.img"))
        return Path(own[-1]), initrd if initrd.exists() else None
    return _debian_cloud_kernel(), None


def test_kvm_that_cannot_boot_linux_is_not_used(kvm_libvirt_host, linux_kernel):
    """The probe decides, not the device: on KVM-PVM (this machine's KVM)
    libvirt offers KVM, yet a Linux kernel cannot run under it."""
    conn = kvm_libvirt_host.connect()
    kernel, initrd = linux_kernel
    assert "<domain>kvm</domain>" in conn.getDomainCapabilities(None, "x86_64", None, "kvm", 0)

    accel, detail = hypervisor.detect_acceleration(conn, kernel=kernel, initrd=initrd)

    if Path("/sys/module/kvm_pvm").exists():
        assert accel == "tcg"
        assert "probe boot" in detail and re.search(r"MSR 0x10a|emulation failure|KVM internal error", detail), detail
    else:
        assert accel == "kvm", detail
    assert hypervisor.detect_acceleration(conn, kernel=None, initrd=None)[0] == "tcg"


def test_a_flattened_copy_stands_alone_and_a_blank_disk_is_owned_like_its_directory(tmp_path):
    base, overlay = tmp_path / "base.qcow2", tmp_path / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 1M", str(base)], check=True, capture_output=True)
    hypervisor.create_overlay(backing=base, backing_format="qcow2", path=overlay, size_bytes=128 * 2**20)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0xcd 1M 1M", str(overlay)], check=True,
                   capture_output=True)
    seen: list[float] = []
    flat = tmp_path / "flat.qcow2"
    assert hypervisor.flatten(overlay, flat, on_progress=seen.append) == 128 * 2**20
    assert seen and seen[-1] == 100.0
    info = hypervisor.image_info(flat, "qcow2")
    assert "backing-filename" not in info
    base.unlink()  # the copy needs nothing of its chain
    for offset, pattern in (("0", "0xab"), ("1M", "0xcd")):
        check = subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"read -P {pattern} {offset} 1M", str(flat)],
                               capture_output=True, text=True)
        assert check.returncode == 0 and "Pattern verification failed" not in check.stdout, check.stdout

    directory = tmp_path / "vm"
    directory.mkdir()
    os.chown(directory, 4242, 4343)
    blank = directory / "disk.qcow2"
    hypervisor.create_blank(blank, 2**30)
    assert (blank.stat().st_uid, blank.stat().st_gid, blank.stat().st_mode & 0o777) == (4242, 4343, 0o600)
    assert hypervisor.image_info(blank, "qcow2")["virtual-size"] == 2**30
    assert list(directory.iterdir()) == [blank], "no temporary file left"
