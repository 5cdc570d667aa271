"""A session libvirtd run by a dedicated Unix user: the local hypervisor of
`make run` when it runs as root, and the test suite's hosts.

As root, `qemu:///session` means the system daemon's socket, which a machine
without libvirt-daemon-system does not have. A session daemon of an
unprivileged user needs no system set-up: it keeps its state in its XDG
directories, runs QEMU as that user (TCG where it cannot open /dev/kvm), and
root reaches it as a client through `qemu+unix:///session?socket=...`.

    <home>/                  the user's, 0700
        c/ r/ k/             XDG_CONFIG_HOME, XDG_RUNTIME_DIR, XDG_CACHE_HOME
        storage/             overlays, seeds and serial logs of its guests (0750)

The paths are short on purpose: libvirt puts the guest agent's socket at
$XDG_CONFIG_HOME/libvirt/qemu/channel/target/domain-<id>-<name>/org.qemu.guest_agent.0,
and a Unix socket path has at most 107 bytes.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

# libvirtd daemonizes QEMU and virtlogd, so they are reparented to PID 1;
# an init that reaps slowly makes libvirt wait for a destroyed guest's
# zombie (1.6 s a guest here). The daemon runs under a small parent that
# adopts its orphans (a child subreaper) and reaps them at once. When the
# daemon stops, what it left running (its guests, virtlogd) stops with it:
# SIGTERM, which QEMU takes as a power cut after flushing its disks, then
# SIGKILL after 10 s. It is /usr/bin/python3, not the venv's: the daemon's
# user may not read the venv.
REAPER = """
import ctypes, os, signal, sys, time
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
daemon = os.fork()
if daemon == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
signal.signal(signal.SIGTERM, lambda *_: os.kill(daemon, signal.SIGTERM))
signal.signal(signal.SIGINT, lambda *_: os.kill(daemon, signal.SIGTERM))
while True:
    pid, status = os.waitpid(-1, 0)
    if pid == daemon:
        code = os.waitstatus_to_exitcode(status)
        break
def children():
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                if int(stat.read().rsplit(")", 1)[1].split()[1]) == os.getpid():
                    found.append(int(entry))
        except (OSError, ValueError, IndexError):
            pass
    return found
for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
    for pid in children():
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while children() and time.monotonic() < deadline:
        try:
            os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        time.sleep(0.05)
sys.exit(code)
"""
DAEMON = ["/usr/bin/python3", "-c", REAPER, "libvirtd", "--timeout", "0"]


def ensure_user(name: str, comment: str = "InfraSim hypervisor") -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        result = subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", "--comment", comment, name],
            capture_output=True, text=True, check=False,
        )
        if result.returncode not in (0, 9):  # 9: made meanwhile by a parallel start
            raise RuntimeError(f"useradd {name}: {result.stderr.strip()}") from None
        return pwd.getpwnam(name)


@dataclass
class SessionDaemon:
    home: Path
    user: str

    @property
    def config_dir(self) -> Path:
        return self.home / "c"

    @property
    def runtime_dir(self) -> Path:
        return self.home / "r"

    @property
    def cache_dir(self) -> Path:
        return self.home / "k"

    @property
    def storage_dir(self) -> Path:
        return self.home / "storage"

    @property
    def socket(self) -> Path:
        return self.runtime_dir / "libvirt" / "libvirt-sock"

    @property
    def log(self) -> Path:
        return self.home / "libvirtd.log"

    @property
    def uri(self) -> str:
        return f"qemu+unix:///session?socket={self.socket}"

    def prepare(self, host_uuid: str | None = None) -> pwd.struct_passwd:
        """The user, its directories and its libvirtd.conf. The host UUID is
        kept across restarts: libvirt refuses to migrate between two hosts
        with the same one, and machines without SMBIOS have none to offer."""
        account = ensure_user(self.user)
        uid, gid = account.pw_uid, account.pw_gid
        for directory, mode in ((self.home, 0o700), (self.config_dir, 0o700), (self.runtime_dir, 0o700),
                                (self.cache_dir, 0o700), (self.storage_dir, 0o750),
                                (self.config_dir / "libvirt", 0o700)):
            directory.mkdir(mode=mode, parents=True, exist_ok=True)
            os.chown(directory, uid, gid)
        conf = self.config_dir / "libvirt" / "libvirtd.conf"
        if host_uuid is None and conf.exists():
            host_uuid = next((line.split('"')[1] for line in conf.read_text().splitlines()
                              if line.startswith("host_uuid")), None)
        # Its start-up complaints (no system D-Bus, no dnsmasq, no DMI here)
        # go to a file, not into the supervisor's terminal.
        conf.write_text(f'host_uuid = "{host_uuid or uuid.uuid4()}"\nlog_outputs = "3:file:{self.log}"\n')
        self.log.touch()
        for path in (conf, self.log):
            os.chown(path, uid, gid)
        # A socket left by a daemon that was killed would stop the next one.
        self.socket.unlink(missing_ok=True)
        return account

    def environment(self) -> dict[str, str]:
        return {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.config_dir),
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "XDG_CACHE_HOME": str(self.cache_dir),
            "LANG": "C.UTF-8",
        }

    def exec(self) -> None:
        """Become the daemon (for a supervisor such as `make run`'s)."""
        account = self.prepare()
        os.chdir(self.home)
        os.setgroups([])
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)
        os.execve(DAEMON[0], DAEMON, self.environment())
