"""Two real libvirt hosts on this machine, for the appliance tests.

Each host is a session `libvirtd` run by its own Unix user (infrasim-hv1,
infrasim-hv2) with its own XDG directories and its own `host_uuid`, so
libvirt sees two machines and will migrate between them. Root, like the
worker, talks to both as a client over their sockets.

    /tmp/ihv-<token>/            the run (root, 0755); owner.pid names the pytest process
        images/                  world-readable base images both hosts share
        hv1/                     infrasim-hv1: a SessionDaemon home (appliances/sessiond.py,
                                 the same daemon `make run` runs as root)
        hv2/ ...
        kvm/                     infrasim-kvm: a third host, only for the KVM probe
                                 (`kvm_libvirt_host`), whose daemon may open /dev/kvm

The paths are short on purpose: libvirt puts the guest agent's socket at
$XDG_CONFIG_HOME/libvirt/qemu/channel/target/domain-<id>-<name>/org.qemu.guest_agent.0,
and a Unix socket path has at most 107 bytes.

A run that died leaves its directory behind; the next run kills what still
runs from it (daemons, virtlogd, QEMU: found by their environment or
command line naming the directory) and removes it.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest

from appliances import hypervisor
from appliances.sessiond import DAEMON, SessionDaemon, ensure_user
from tests.mesh.netns import _pid_alive

USERS = ("infrasim-hv1", "infrasim-hv2", "infrasim-kvm")
RUN_ROOT = Path("/tmp")
RUN_PREFIX = "ihv-"
START_TIMEOUT_S = 20

def _ensure_user(name: str):
    return ensure_user(name, comment="InfraSim test hypervisor")


def _processes_under(directory: Path) -> list[int]:
    """Our users' processes whose environment or command line names
    `directory`: the daemons (XDG_* point there), virtlogd, and QEMU (its
    sockets are there)."""
    needle = str(directory).encode() + b"/"
    uids = set()
    for user in USERS:
        try:
            uids.add(pwd.getpwnam(user).pw_uid)
        except KeyError:
            continue
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or entry.stat().st_uid not in uids:
                continue
            if needle in (entry / "environ").read_bytes() or needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _kill_and_wait(pids: list[int], sig: int = signal.SIGKILL, timeout: float = 10) -> list[int]:
    """Signal `pids`; returns those still alive after `timeout`."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _pid_alive(pid) and not _is_zombie(pid)]
        time.sleep(0.05)
    return alive


def _is_zombie(pid: int) -> bool:
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


def sweep_stale() -> None:
    for run in RUN_ROOT.glob(f"{RUN_PREFIX}*"):
        try:
            owner = int((run / "owner.pid").read_text())
        except (OSError, ValueError):
            owner = None
        if owner is not None and _pid_alive(owner):
            continue
        if owner is None and time.time() - run.stat().st_mtime < 60:
            continue  # a run still writing its owner file
        _kill_and_wait(_processes_under(run))
        shutil.rmtree(run, ignore_errors=True)


@dataclass
class LibvirtHost:
    """One session libvirtd: a hypervisor host as the worker sees it."""

    name: str
    user: str
    uid: int
    gid: int
    home: Path
    host_uuid: str
    kvm_device: bool = False
    process: subprocess.Popen | None = None

    @property
    def daemon(self) -> SessionDaemon:
        return SessionDaemon(self.home, self.user)

    @property
    def storage_dir(self) -> Path:
        return self.daemon.storage_dir

    @property
    def socket(self) -> Path:
        return self.daemon.socket

    @property
    def uri(self) -> str:
        return self.daemon.uri

    migration_address = "127.0.0.1"

    def connect(self) -> libvirt.virConnect:
        return hypervisor.connect(self.uri)

    def start(self) -> None:
        self.daemon.prepare(self.host_uuid)
        environment = self.daemon.environment()
        if not self.kvm_device:
            command, as_user = DAEMON, {"user": self.uid, "group": self.gid, "extra_groups": []}
        else:
            # In a mount namespace of its own, /dev/kvm is a node this user
            # owns: the daemon may use KVM as one in the kvm group would,
            # and nothing changes for the rest of the machine.
            node = self.home / "kvm"
            os.mknod(node, 0o600 | stat.S_IFCHR, os.stat("/dev/kvm").st_rdev)
            os.chown(node, self.uid, self.gid)
            command = [
                "unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount --bind "$0" /dev/kvm && uid=$1 gid=$2 && shift 2 && '
                'exec setpriv --reuid "$uid" --regid "$gid" --clear-groups "$@"',
                str(node), str(self.uid), str(self.gid), *DAEMON,
            ]
            as_user = {}
        with open(self.daemon.log, "ab") as log:
            self.process = subprocess.Popen(
                command, env=environment, cwd=self.home, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, **as_user,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"libvirtd of {self.user} exited: {self.daemon.log.read_text()}")
            if self.socket.exists():
                try:
                    self.connect().close()
                    return
                except hypervisor.HypervisorError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"libvirtd of {self.user} did not answer within {START_TIMEOUT_S} s")
            time.sleep(0.05)

    def remove_all_domains(self) -> None:
        conn = self.connect()
        try:
            for domain in hypervisor.list_domains(conn):
                hypervisor.undefine(conn, domain["uuid"])
        finally:
            conn.close()

    def stop(self) -> None:
        """Domains first (libvirtd leaves its QEMUs running when it stops),
        then the daemon, then whatever it spawned (virtlogd)."""
        if self.process is not None and self.process.poll() is None:
            try:
                self.remove_all_domains()
            finally:
                self.process.terminate()
                try:
                    self.process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        _kill_and_wait(_processes_under(self.home), signal.SIGTERM, timeout=5)
        _kill_and_wait(_processes_under(self.home))


@dataclass
class LibvirtHosts:
    first: LibvirtHost
    second: LibvirtHost
    images_dir: Path  # base images both hosts can read

    def __iter__(self) -> Iterator[LibvirtHost]:
        return iter((self.first, self.second))

    def remove_all_domains(self) -> None:
        for host in self:
            host.remove_all_domains()


def _host(run: Path, name: str, user: str, *, kvm_device: bool = False) -> LibvirtHost:
    account = _ensure_user(user)
    return LibvirtHost(name=name, user=user, uid=account.pw_uid, gid=account.pw_gid, home=run / name,
                       host_uuid=str(uuid.uuid4()), kvm_device=kvm_device)


@pytest.fixture(scope="session")
def hypervisor_run_dir() -> Iterator[Path]:
    """This run's directory; whatever still runs from it goes with it."""
    if os.geteuid() != 0:
        pytest.fail("the libvirt hosts run as dedicated Unix users; creating them and starting their daemons needs root")
    missing = [tool for tool in ("libvirtd", "virtlogd", "qemu-system-x86_64", "qemu-img", "unshare", "setpriv")
               if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing: {', '.join(missing)} "
                    "(Debian: libvirt-daemon libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils util-linux)")
    sweep_stale()
    run = RUN_ROOT / f"{RUN_PREFIX}{secrets.token_hex(3)}"
    run.mkdir(mode=0o755)
    os.chmod(run, 0o755)
    (run / "owner.pid").write_text(str(os.getpid()))
    (run / "images").mkdir(mode=0o755)
    try:
        yield run
    finally:
        _kill_and_wait(_processes_under(run))
        shutil.rmtree(run, ignore_errors=True)


@pytest.fixture(scope="session")
def libvirt_hosts(hypervisor_run_dir: Path) -> Iterator[LibvirtHosts]:
    """Two hosts, infrasim-hv1 and infrasim-hv2, for placement and migration."""
    hosts = []
    try:
        for index, user in enumerate(USERS[:2], start=1):
            hosts.append(_host(hypervisor_run_dir, f"hv{index}", user))
            hosts[-1].start()
        yield LibvirtHosts(hosts[0], hosts[1], hypervisor_run_dir / "images")
    finally:
        for host in hosts:
            host.stop()


@pytest.fixture(scope="session")
def kvm_libvirt_host(hypervisor_run_dir: Path) -> Iterator[LibvirtHost]:
    """A host whose daemon may open /dev/kvm, so libvirt offers KVM there.
    (As root, qemu:///session means the system daemon's socket, which this
    machine does not run; a session daemon with KVM access is the same
    thing for the acceleration probe.)"""
    if not os.path.exists("/dev/kvm"):
        pytest.fail("this machine has no /dev/kvm")
    host = _host(hypervisor_run_dir, "kvm", USERS[2], kvm_device=True)
    try:
        host.start()
        yield host
    finally:
        host.stop()
