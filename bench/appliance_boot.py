#!/usr/bin/env python
"""Benchmark: creating an appliance, from the API call to a running domain and to `ready`.

Run as root from the project root:  .venv/bin/python bench/appliance_boot.py
(--quick for a smoke run: one run of each, the 2 GiB template only; --help for the knobs).

1. API call -> domain running, for the Debian template built on this host (2 GiB
   disk) and a 20 GiB template derived from it, against a full copy.
   - ours: POST /api/meshnet/appliances through Django's test Client, signed in as
     a user with a claimed handle; the commit queues the create job on the host's
     queue in Redis, where a real Celery worker thread of this process
     (celery.contrib.testing.worker, thread pool) runs appliances.jobs.run_operation:
     image cache lookup, linked clone (hypervisor.create_overlay), seed ISO
     (cloudinit.write_seed_iso), domain XML, define_and_start. Timed until libvirt
     reports the domain running (lookupByName + state, polled every 2 ms).
   - reference: `qemu-img convert -O qcow2` of the same image, the same seed ISO
     writer, then define and start the same domain (same DomainSpec fields).
   Both domains are removed after every run: ours through DELETE on the API (the
   worker runs the delete job), the reference with hypervisor.undefine.
   The 20 GiB template: the built image converted to a new qcow2, grown to 20 GiB,
   and --fill-gib GiB of random bytes written with qemu-io past the end of its
   2 GiB filesystem, so a full copy has that much more to copy. It is cached with a
   CacheEntry (the derived disk, and the built image's kernel and initrd) rather
   than downloaded through images.fetch: a downloaded image has no separate
   kernel, so its domain would boot through SeaBIOS and the two templates' domains
   would differ in more than their disk size.
2. API call -> ready: the same POST, until cloud-init's phone home reaches our
   ASGI app (uvicorn in a thread of this process, guests reach it at 10.0.2.2).
   Reference: plain `qemu-system-x86_64 -accel tcg` with the same kernel, initrd,
   command line, machine, CPU model, vCPUs, memory, virtio disk (a qcow2 overlay
   on the same image), seed drive, user-mode NIC, virtio RNG and guest agent
   channel as the domain libvirt starts, and a seed with the same user-data
   (hostname, a wg0.conf and the runcmd that starts wg-quick@wg0, phone_home),
   whose phone home goes to a bare http.server on another port. The mesh gateway
   does not exist in the bench, in both cases: wg-quick@wg0 starts and gets no
   handshake, which does not hold up cloud-init.

Root's qemu:///session means the system daemon's socket on this machine (which
does not run), so the bench starts its own session libvirtd as an unprivileged
user (--libvirt-user, default nobody) with its XDG directories in the bench's
temporary directory, as tests/hypervisors.py does; QEMU runs TCG under it.

Another user's QEMU on this 2-core machine would distort the figures: before
every sample the bench waits until no other qemu-system process runs (up to
--wait-minutes), and a sample during which one ran is measured again (--redo),
as is a boot to ready during which the machine kept more than --max-busy-cpus
busy (other users' work that is not QEMU).

Everything lives in a temporary directory (INFRASIM_VAR_DIR with SQLite, the
session daemon's directories, the host's storage, the derived image); the
domains, QEMU processes, the daemon and its virtlogd, the uvicorn and Celery
threads and a private redis-server (unless REDIS_URL answers) are removed at the
end, also on errors, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import os
import pwd
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infrasim_site.localredis import free_port, redis_answers, start_private_redis  # noqa: E402  (needs ROOT on the path)

BUILT_TEMPLATE = "debian-bookworm-local"
LARGE_TEMPLATE = "bench-derived-large"
SHARED_IMAGE_CACHE = Path("/var/cache/infrasim")
API = "/api/meshnet"
VCPUS, MEMORY_MIB = 1, 512
KERNEL_CMDLINE = "root=/dev/vda rw console=ttyS0"  # what appliances.jobs.domain_spec passes
FILL_CHUNK = 256 * 2**20
TARGET_RUNNING_S = 1.0
TARGET_FLAT = 1.2  # the large template's time within 20% of the small one's
TARGET_READY_RATIO = 1.1
SESSION_LOGIN_BACKEND = "django_otp_webauthn.backends.WebAuthnBackend"
# cloud-init's last stage (phone_home runs in it), with the guest's uptime then.
FINAL_STAGE = re.compile(r"running 'modules:final' at .*? Up ([\d.]+) seconds")


# --- small helpers ------------------------------------------------------------------------


def gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"


def stop_process(process: subprocess.Popen, timeout: float = 10) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def run(command: list[str], **kwargs) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} ... failed: {(result.stderr or result.stdout).strip()[-2000:]}")
    return result.stdout


def processes_naming(directory: Path) -> list[int]:
    """Processes whose command line or environment names `directory` (the
    session daemon, its virtlogd and QEMUs; our plain QEMUs)."""
    needle = str(directory).encode() + b"/"
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as cmdline, open(f"/proc/{entry.name}/environ", "rb") as environ:
                if needle in cmdline.read() or needle in environ.read():
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def kill_and_wait(pids: list[int], sig: int, timeout: float) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() and not _zombie(pid) for pid in pids):
        time.sleep(0.05)


def _zombie(pid: int) -> bool:
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


# --- other people's QEMU --------------------------------------------------------------------


class Neighbours:
    """Other users' qemu-system processes (what `pgrep -f qemu-system` finds,
    minus zombies, whose command line is empty, and minus ours) and other
    work on the machine: waited for before each sample; QEMU is also watched
    during it, so a disturbed sample is redone."""

    IDLE_PROBE_S = 3.0

    def __init__(self, ours: Path, max_wait_s: float, idle_cpus: float):
        self.ours = str(ours).encode() + b"/"
        self.max_wait_s, self.idle_cpus = max_wait_s, idle_cpus
        self.waited_s = 0.0
        self.seen_pids: set[int] = set()
        self.sightings: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="qemu-watch", daemon=True)

    def foreign(self) -> list[int]:
        found = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as cmdline:
                    text = cmdline.read()
                if b"qemu-system" not in text or self.ours in text:
                    continue
                with open(f"/proc/{entry.name}/environ", "rb") as environ:
                    if self.ours in environ.read():
                        continue
            except OSError:
                continue
            found.append(int(entry.name))
        return found

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            if pids := self.foreign():
                self.sightings.append(time.monotonic())
                self.seen_pids.update(pids)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _busy_now(self) -> float:
        before = cpu_jiffies()
        time.sleep(self.IDLE_PROBE_S)
        return busy_cpus(before, cpu_jiffies(), self.IDLE_PROBE_S)

    def wait_quiet(self) -> bool:
        """True once no other QEMU runs and the machine is about idle; False
        when --wait-minutes ran out."""
        started = time.monotonic()
        announced = ""
        while True:
            if pids := self.foreign():
                self.seen_pids.update(pids)
                why = f"other QEMU processes to end: pids {', '.join(map(str, pids))}"
            elif (busy := self._busy_now()) > self.idle_cpus:
                why = f"the machine to calm down: {busy:.2f} CPUs busy"
            else:
                if announced:
                    self.waited_s += time.monotonic() - started
                return True
            if why.split(":")[0] != announced:
                announced = why.split(":")[0]
                print(f"  (waiting for {why})", flush=True)
            if time.monotonic() - started > self.max_wait_s:
                self.waited_s += time.monotonic() - started
                print(f"  (still waiting for {announced} after {self.max_wait_s / 60:g} min; measuring anyway)",
                      flush=True)
                return False
            time.sleep(2)

    def disturbed(self, since: float, until: float) -> bool:
        return any(since - 0.5 <= seen <= until + 0.5 for seen in self.sightings)


def cpu_jiffies() -> tuple[int, int]:
    """(busy, all) jiffies of the whole machine so far (/proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def busy_cpus(before: tuple[int, int], after: tuple[int, int], seconds: float) -> float:
    """CPUs kept busy on average, by everybody (steal included): more than
    ours needs means something else competed for the two cores."""
    return (after[0] - before[0]) / os.sysconf("SC_CLK_TCK") / max(seconds, 1e-3)


def final_stage_uptime(console: str) -> float:
    """The guest's uptime when cloud-init started its last stage: how long
    the guest itself took, whoever started it (NaN if the log lacks it)."""
    found = FINAL_STAGE.findall(console)
    return float(found[-1]) if found else float("nan")


@dataclass
class Sample:
    seconds: float
    detail: dict = field(default_factory=dict)
    disturbed: bool = False


def measure(label: str, neighbours: Neighbours, redo: int, take, *, max_busy_cpus: float | None = None) -> Sample:
    """One sample of `take()` on a quiet machine, measured again (at most
    `redo` times) when another QEMU ran meanwhile or, with `max_busy_cpus`,
    when the machine was busier than the sample alone makes it."""
    for attempt in range(redo + 1):
        quiet = neighbours.wait_quiet()
        since, cpu_before = time.monotonic(), cpu_jiffies()
        sample = take()
        busy = sample.detail["busy_cpus"] = busy_cpus(cpu_before, cpu_jiffies(), time.monotonic() - since)
        if not quiet or neighbours.disturbed(since, time.monotonic()):
            why = "another QEMU ran during the sample"
        elif max_busy_cpus is not None and busy > max_busy_cpus:
            why = f"the machine kept {busy:.2f} CPUs busy, more than {max_busy_cpus:g}"
        else:
            return sample
        if attempt < redo:
            print(f"  ({label}: {why}; measuring again)", flush=True)
    sample.disturbed = True
    return sample


# --- the hypervisor: a session libvirtd of an unprivileged user ----------------------------


class SessionLibvirtd:
    def __init__(self, home: Path, user: str):
        account = pwd.getpwnam(user)
        self.home, self.user, self.uid, self.gid = home, user, account.pw_uid, account.pw_gid
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"qemu+unix:///session?socket={self.home}/run/libvirt/libvirt-sock"

    def own(self, path: Path) -> None:
        os.chown(path, self.uid, self.gid)

    def start(self) -> None:
        from appliances import hypervisor

        for directory in (self.home, self.home / "cfg", self.home / "run", self.home / "cache",
                          self.home / "cfg" / "libvirt"):
            directory.mkdir(mode=0o700)
            self.own(directory)
        # libvirt reads the host UUID from SMBIOS, which this machine lacks.
        conf = self.home / "cfg" / "libvirt" / "libvirtd.conf"
        conf.write_text(f'host_uuid = "{uuid.uuid4()}"\n')
        self.own(conf)
        environment = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.home), "LANG": "C.UTF-8",
            "XDG_CONFIG_HOME": str(self.home / "cfg"), "XDG_RUNTIME_DIR": str(self.home / "run"),
            "XDG_CACHE_HOME": str(self.home / "cache"),
        }
        with open(self.home / "libvirtd.log", "wb") as log:
            self.process = subprocess.Popen(
                ["libvirtd", "--timeout", "0"], env=environment, cwd=self.home, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                user=self.uid, group=self.gid, extra_groups=[],
            )
        deadline = time.monotonic() + 20
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"libvirtd exited: {(self.home / 'libvirtd.log').read_text()[-2000:]}")
            try:
                hypervisor.connect(self.uri).close()
                return
            except hypervisor.HypervisorError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the session libvirtd did not answer within 20 s") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Its domains, the daemon, then what it spawned (virtlogd, QEMU)."""
        from appliances import hypervisor

        if self.process is not None and self.process.poll() is None:
            try:
                conn = hypervisor.connect(self.uri)
                try:
                    for domain in hypervisor.list_domains(conn):
                        hypervisor.undefine(conn, domain["uuid"])
                finally:
                    conn.close()
            finally:
                stop_process(self.process, timeout=15)
        kill_and_wait(processes_naming(self.home), signal.SIGTERM, 5)
        kill_and_wait(processes_naming(self.home), signal.SIGKILL, 5)


def wait_running(conn, name: str, timeout: float, poll_s: float = 0.002) -> float:
    """perf_counter when libvirt reports domain `name` running."""
    import libvirt

    deadline = time.perf_counter() + timeout
    while True:
        try:
            if conn.lookupByName(name).state()[0] == libvirt.VIR_DOMAIN_RUNNING:
                return time.perf_counter()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
        if time.perf_counter() > deadline:
            raise RuntimeError(f"domain {name} not running after {timeout} s")
        time.sleep(poll_s)


# --- HTTP: the ASGI app, and the reference's bare phone-home listener ----------------------


class AsgiServer:
    """The whole ASGI app on loopback, in a thread (tests/conftest.py's asgi_server)."""

    def __init__(self, port: int):
        import uvicorn

        from infrasim_site.asgi import application

        config = uvicorn.Config(application, host="127.0.0.1", port=port, log_level="warning",
                                ws="websockets-sansio", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class PhoneHomeListener:
    """A bare http.server that notes when each path was first POSTed to."""

    def __init__(self):
        arrivals: dict[str, float] = {}
        arrived = threading.Condition()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                now = time.time()
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                with arrived:
                    arrivals.setdefault(self.path, now)
                    arrived.notify_all()

            def log_message(self, *args):
                pass

        self.arrivals, self.arrived = arrivals, arrived
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="phone-home", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def wait(self, path: str, timeout: float) -> float | None:
        """time.time() of the first POST to `path`, or None after `timeout`."""
        with self.arrived:
            self.arrived.wait_for(lambda: path in self.arrivals, timeout=timeout)
            return self.arrivals.get(path)


# --- images ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchImage:
    label: str          # "2g", "20g"
    template: str       # the Template slug
    disk: Path
    kernel: Path
    initrd: Path
    virtual_size: int
    allocated: int      # bytes the image file holds

    @property
    def disk_gib(self) -> int:
        return self.virtual_size // 2**30


def image_facts(label: str, template: str, disk: Path, kernel: Path, initrd: Path) -> BenchImage:
    from appliances import hypervisor

    info = hypervisor.image_info(disk, "qcow2")
    return BenchImage(label, template, disk, kernel, initrd, info["virtual-size"], info["actual-size"])


def derive_large_image(base: BenchImage, directory: Path, *, size_gib: int, fill_gib: int) -> Path:
    """The built image as a new qcow2 of `size_gib` GiB, with `fill_gib` GiB of
    random bytes written past its filesystem (which ends at the base's virtual
    size), so that it holds that much more data."""
    directory.mkdir(mode=0o755)
    disk = directory / "disk.qcow2"
    run(["qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", str(base.disk), str(disk)])
    run(["qemu-img", "resize", "-f", "qcow2", str(disk), f"{size_gib}G"])
    chunk = directory / "random.bin"
    try:
        for offset in range(base.virtual_size, base.virtual_size + fill_gib * 2**30, FILL_CHUNK):
            chunk.write_bytes(os.urandom(FILL_CHUNK))  # fresh per chunk: no repeats a copy could skip
            run(["qemu-io", "-f", "qcow2", "-c", f"write -q -s {chunk} {offset} {FILL_CHUNK}", str(disk)])
    finally:
        chunk.unlink(missing_ok=True)
    # Read by QEMU as the session daemon's user, like the image cache's blobs.
    os.chmod(disk, 0o444)
    return disk


def register_large_template(host, image: BenchImage) -> None:
    """A template whose image is in the host's cache already (see the module
    docstring for why it is not downloaded)."""
    from appliances.models import CacheEntry, Template
    from infrasim_site.steps import StepStatus

    template = Template.objects.create(
        slug=image.template, name="Bench: derived large image", os="Debian 12 (bookworm)",
        default_disk_gib=image.disk_gib, min_disk_gib=image.disk_gib, min_memory_mib=256, sort_order=900,
    )
    CacheEntry.objects.create(
        host=host, template=template, status=StepStatus.SUCCEEDED, digest=f"bench:{image.disk.parent.name}",
        disk_path=str(image.disk), disk_format="qcow2", kernel_path=str(image.kernel), initrd_path=str(image.initrd),
        size=image.disk.stat().st_size, virtual_size=image.virtual_size,
    )


# --- user-data of the references -----------------------------------------------------------


def reference_seed(directory: Path, *, hostname: str, phone_home_url: str, listen_port: int) -> Path:
    """A NoCloud seed shaped like an appliance's: the same builder, a wg0.conf
    of the same form (fresh keys, the endpoint guests on a host dial), the
    runcmd that starts wg-quick@wg0, and phone_home."""
    from django.conf import settings

    from appliances import cloudinit
    from mesh import keys, wgconf

    private_key = keys.generate_keypair()[0]
    wg0 = wgconf.peer_config(
        name=f"appliance {hostname}", private_key=private_key, ipv4="100.96.255.2", ipv6="fd42:1f5a:7c00::ff02",
        gateway_public_key=keys.generate_keypair()[1], preshared_key=None, endpoint=f"10.0.2.2:{listen_port}",
        allowed_ips=[settings.MESH_IPV4_CIDR, settings.MESH_IPV6_PREFIX], keepalive=settings.MESH_DEFAULT_KEEPALIVE,
    )
    user_data = cloudinit.build_user_data(hostname=hostname, ssh_authorized_keys=[], wg0_conf=wg0,
                                          phone_home_url=phone_home_url)
    meta_data = cloudinit.build_meta_data(instance_id=f"iid-{uuid.uuid4()}", hostname=hostname)
    seed = directory / "seed.iso"
    cloudinit.write_seed_iso(seed, user_data=user_data, meta_data=meta_data, mode=0o600)
    return seed


def plain_qemu_command(name: str, image: BenchImage, *, overlay: Path, seed: Path, directory: Path) -> list[str]:
    """qemu-system-x86_64 with the virtual hardware libvirt gives an appliance
    (hypervisor.domain_xml: machine, CPU model, timers, virtio disk, seed
    drive, user-mode virtio NIC without option ROM, serial log, guest agent
    channel, virtio RNG; the options as in the command line libvirt 9.0 runs)."""
    from appliances import hypervisor

    if hypervisor.TCG_CPU_MODE != "maximum":
        raise RuntimeError(f"teach the reference the CPU mode {hypervisor.TCG_CPU_MODE!r}")
    seed_device = {"virtio": "virtio-blk-pci,drive=seed0", "sata": "ide-cd,bus=ide.0,drive=seed0"}.get(hypervisor.SEED_BUS)
    if seed_device is None:
        raise RuntimeError(f"teach the reference the seed bus {hypervisor.SEED_BUS!r}")
    seed_media = ",media=cdrom" if hypervisor.SEED_BUS == "sata" else ""
    power = "ICH9-LPC" if hypervisor.MACHINE == "q35" else "PIIX4_PM"  # <pm> suspend off, as libvirt says it
    return [
        "qemu-system-x86_64", "-name", f"guest={name}", "-no-user-config", "-nodefaults",
        "-machine", f"{hypervisor.MACHINE},usb=off,vmport=off,dump-guest-core=off,graphics=off", "-accel", "tcg",
        "-cpu", "max", "-m", str(MEMORY_MIB), "-smp", str(VCPUS), "-display", "none",
        "-rtc", "base=utc,driftfix=slew", "-global", "kvm-pit.lost_tick_policy=delay", "-no-hpet", "-no-shutdown",
        "-global", f"{power}.disable_s3=1", "-global", f"{power}.disable_s4=1",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", KERNEL_CMDLINE,
        "-drive", f"file={overlay},if=none,id=disk0,format=qcow2,cache=writeback,discard=unmap",
        "-device", "virtio-blk-pci,drive=disk0,write-cache=on",
        "-drive", f"file={seed},if=none,id=seed0,format=raw,readonly=on{seed_media}", "-device", seed_device,
        "-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0,romfile=",
        "-serial", f"file:{directory / 'serial.log'}",
        "-chardev", f"socket,id=qga0,path={directory / 'qga.sock'},server=on,wait=off",
        "-device", "virtio-serial-pci", "-device", f"virtserialport,chardev=qga0,name={hypervisor.GUEST_AGENT_CHANNEL}",
        "-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-pci,rng=rng0",
    ]


# --- part 1: API call -> domain running ---------------------------------------------------


class Bench:
    """One sample of each figure per call, each leaving nothing behind."""

    def __init__(self, args, workdir: Path, daemon: SessionLibvirtd, host, client,
                 phone_home: PhoneHomeListener | None):
        self.args, self.workdir, self.daemon, self.host = args, workdir, daemon, host
        self.client, self.phone_home = client, phone_home
        self.counter = 0

    def next_name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter}"

    @functools.cached_property
    def listen_port(self) -> int:
        """The mesh network's port, which appliances' wg0.conf dial (the
        network exists after the first create, i.e. after the warm-up)."""
        from django.conf import settings

        from mesh.models import MeshNetwork

        return MeshNetwork.objects.get(name=settings.MESH_DEFAULT_NETWORK).listen_port

    # ours ----------------------------------------------------------------------------------

    def create(self, image: BenchImage, name: str) -> int:
        response = self.client.post(f"{API}/appliances", {
            "name": name, "template": image.template, "vcpus": VCPUS, "memory_mib": MEMORY_MIB,
            "disk_gib": image.disk_gib,
        }, content_type="application/json")
        if response.status_code != 201:
            raise RuntimeError(f"POST {API}/appliances answered {response.status_code}: {response.content[:500]!r}")
        return response.json()["id"]

    def delete(self, appliance_id: int) -> None:
        """Through the API; the worker's delete job removes domain, files and peer."""
        from appliances.models import Appliance

        response = self.client.delete(f"{API}/appliances/{appliance_id}")
        if response.status_code != 202:
            raise RuntimeError(f"DELETE answered {response.status_code}: {response.content[:500]!r}")
        deadline = time.monotonic() + 120
        while Appliance.objects.filter(pk=appliance_id).exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"appliance {appliance_id} still there 120 s after its delete")
            time.sleep(0.05)

    def _failure(self, appliance_id: int) -> str | None:
        from appliances.models import Appliance

        row = Appliance.objects.filter(pk=appliance_id).values("status", "last_error").first()
        if row is None or row["status"] != "failed":
            return None
        return row["last_error"] or "failed"

    def ours_to_running(self, image: BenchImage) -> Sample:
        from appliances import hypervisor
        from appliances.models import Operation

        conn = hypervisor.connect(self.daemon.uri)
        appliance_id = None
        try:
            wall0, t0 = time.time(), time.perf_counter()
            appliance_id = self.create(image, self.next_name(f"run{image.label}"))
            posted = time.perf_counter()
            try:
                running = wait_running(conn, f"infrasim-{appliance_id}", self.args.timeout)
            except RuntimeError:
                raise RuntimeError(f"appliance {appliance_id}: {self._failure(appliance_id) or 'not running'}") from None
            # The worker's claim, on the wall clock (the job may start before the answer reaches the client).
            claimed = Operation.objects.get(appliance_id=appliance_id, kind="create").started_at.timestamp() - wall0
            disk = self.host_disk(appliance_id)
            return Sample(running - t0, {
                "post_ms": (posted - t0) * 1000,
                "claim_ms": claimed * 1000,
                "job_ms": (running - t0 - claimed) * 1000,
                "disk_mib": disk.stat().st_blocks * 512 / 2**20,
            })
        finally:
            conn.close()
            if appliance_id is not None:
                self.delete(appliance_id)

    def host_disk(self, appliance_id: int) -> Path:
        return Path(self.host.storage_dir) / f"infrasim-{appliance_id}" / "disk.qcow2"

    # the full copy ---------------------------------------------------------------------------

    def full_copy_to_running(self, image: BenchImage) -> Sample:
        from appliances import hypervisor

        name = self.next_name(f"copy{image.label}")
        directory = Path(self.host.storage_dir) / name
        domain_uuid = str(uuid.uuid4())
        conn = None
        try:
            t0 = time.perf_counter()
            directory.mkdir(mode=0o750)
            self.daemon.own(directory)
            disk = directory / "disk.qcow2"
            run(["qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", str(image.disk), str(disk)])
            self.daemon.own(disk)
            # The domain goes before its guest could phone home; the URL only gives the seed its shape.
            seed = reference_seed(directory, hostname=name, phone_home_url="http://10.0.2.2:9/phone-home/unused",
                                  listen_port=self.listen_port)
            self.daemon.own(seed)
            copied = time.perf_counter()
            conn = hypervisor.connect(self.daemon.uri)
            spec = hypervisor.DomainSpec(
                name=name, uuid=domain_uuid, title=f"{name} (bench)", vcpus=VCPUS, memory_mib=MEMORY_MIB,
                accel=self.host.acceleration, disk=str(disk), seed_iso=str(seed),
                serial_log=str(directory / "serial.log"), kernel=str(image.kernel), initrd=str(image.initrd),
                cmdline=KERNEL_CMDLINE, metadata={"appliance": "0", "owner": "0", "template": image.template},
            )
            hypervisor.define_and_start(conn, hypervisor.domain_xml(spec))
            running = wait_running(conn, name, self.args.timeout)
            return Sample(running - t0, {"copy_ms": (copied - t0) * 1000, "start_ms": (running - copied) * 1000,
                                         "disk_mib": disk.stat().st_blocks * 512 / 2**20})
        finally:
            if conn is not None:
                hypervisor.undefine(conn, domain_uuid)
                conn.close()
            shutil.rmtree(directory, ignore_errors=True)

    # part 2: API call -> ready -----------------------------------------------------------------

    def ours_to_ready(self, image: BenchImage) -> Sample:
        from appliances import jobs
        from appliances.models import Appliance, Operation

        appliance_id = None
        try:
            wall0 = time.time()
            appliance_id = self.create(image, self.next_name("ready"))
            deadline = time.monotonic() + self.args.boot_timeout
            while True:
                row = Appliance.objects.filter(pk=appliance_id).values("status", "ready_at", "last_error").first()
                if row["status"] == "ready":
                    break
                if row["status"] == "failed" or time.monotonic() > deadline:
                    appliance = Appliance.objects.select_related("host").get(pk=appliance_id)
                    raise RuntimeError(
                        f"appliance {appliance_id} is {row['status']} ({row['last_error'] or 'no error'}) "
                        f"after {time.time() - wall0:.0f} s; serial tail:\n{jobs.console_tail(appliance)[-3000:]}"
                    )
                time.sleep(0.25)
            job_done = Operation.objects.get(appliance_id=appliance_id, kind="create").finished_at.timestamp()
            console = jobs.console_tail(Appliance.objects.select_related("host").get(pk=appliance_id), 1 << 20)
            return Sample(row["ready_at"].timestamp() - wall0, {"started_s": job_done - wall0,
                                                                "final_up_s": final_stage_uptime(console)})
        finally:
            if appliance_id is not None:
                self.delete(appliance_id)

    def plain_qemu_to_ready(self, image: BenchImage) -> Sample:
        name = self.next_name("plain")
        directory = self.workdir / name
        token = uuid.uuid4().hex
        path = f"/phone-home/{token}"
        process = None
        try:
            wall0 = time.time()
            directory.mkdir(mode=0o700)
            overlay = directory / "disk.qcow2"
            run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image.disk), str(overlay),
                 str(image.virtual_size)])
            seed = reference_seed(directory, hostname=name, phone_home_url=f"http://10.0.2.2:{self.phone_home.port}{path}",
                                  listen_port=self.listen_port)
            command = plain_qemu_command(name, image, overlay=overlay, seed=seed, directory=directory)
            with open(directory / "qemu.log", "wb") as log:
                process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            started = time.time()
            arrived = self.phone_home.wait(path, self.args.boot_timeout)
            if arrived is None:
                tail = (directory / "serial.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"plain QEMU: no phone home after {self.args.boot_timeout} s; "
                                   f"exit status {process.poll()}; serial tail:\n{tail}")
            console = (directory / "serial.log").read_text(errors="replace")
            return Sample(arrived - wall0, {"started_s": started - wall0, "final_up_s": final_stage_uptime(console)})
        finally:
            if process is not None:
                stop_process(process)
            shutil.rmtree(directory, ignore_errors=True)


# --- set-up --------------------------------------------------------------------------------


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="samples of each figure, ours and reference alternating (default 3)")
    parser.add_argument("--large-gib", type=int, default=20, help="virtual size of the derived template (default 20)")
    parser.add_argument("--fill-gib", type=int, default=4,
                        help="GiB of random data written into the derived image beyond its filesystem (default 4)")
    parser.add_argument("--skip-ready", action="store_true", help="part 1 only (no guest boots to ready)")
    parser.add_argument("--quick", action="store_true", help="one run of each, the 2 GiB template only")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for a domain to run (default 120)")
    parser.add_argument("--boot-timeout", type=float, default=600, help="seconds to wait for a phone home (default 600)")
    parser.add_argument("--wait-minutes", type=float, default=20,
                        help="how long to wait for other users' QEMU to end and the machine to calm down "
                             "before a sample (default 20)")
    parser.add_argument("--redo", type=int, default=2,
                        help="times a disturbed sample is measured again (default 2)")
    parser.add_argument("--idle-cpus", type=float, default=0.5,
                        help="before a sample, wait until the machine keeps at most this many CPUs busy (default 0.5)")
    parser.add_argument("--max-busy-cpus", type=float, default=1.3,
                        help="a boot to ready during which the machine kept more CPUs busy on average (everybody's; "
                             "one TCG guest takes about 1) is measured again (default 1.3)")
    parser.add_argument("--libvirt-user", default="nobody", help="Unix user of the session libvirtd (default nobody)")
    args = parser.parse_args()
    args.large = not args.quick
    if args.quick:
        args.runs = 1
    if args.runs < 1 or args.redo < 0:
        parser.error("--runs >= 1 and --redo >= 0")
    if args.fill_gib < 1 or args.large_gib < 3:
        parser.error("--fill-gib >= 1 and --large-gib >= 3")
    return args


def preflight(args) -> None:
    if os.geteuid() != 0:
        raise SystemExit("run as root: the bench starts a session libvirtd as another user and chowns its files")
    for tool in ("libvirtd", "qemu-system-x86_64", "qemu-img", "qemu-io", "redis-server"):
        if shutil.which(tool) is None:
            raise SystemExit(f"`{tool}` is not installed (the Makefile's system packages, and qemu-utils)")
    try:
        pwd.getpwnam(args.libvirt_user)
    except KeyError:
        raise SystemExit(f"there is no Unix user {args.libvirt_user!r} (--libvirt-user)") from None


def make_user():
    """A signed-up user with a claimed handle, as tests/people.person makes one."""
    from identity.handles import skeleton
    from identity.models import Identity, User

    user = User.objects.create_user(display_name="Bench User", signup_state=User.SignupState.ACTIVE)
    Identity.objects.create(user=user, handle="benchuser", handle_skeleton=skeleton("benchuser"),
                            status=Identity.Status.ACTIVE)
    return user


def forget_queues(redis_url: str, queues: list[str]) -> None:
    """On a shared Redis: drop what was queued for our private queues."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(*queues, *(f"_kombu.binding.{queue}" for queue in queues))
    finally:
        client.close()


def report(results: dict, neighbours: Neighbours, images: list[BenchImage]) -> None:
    running = {image.label: statistics.median([s.seconds for s in results["ours", image.label]]) for image in images}
    copy = {image.label: statistics.median([s.seconds for s in results["copy", image.label]]) for image in images}
    print("\n## medians")
    print(f"{'template':<9} {'api_to_running_s':>16} {'full_copy_s':>12} {'ratio':>7}")
    for image in images:
        print(f"{image.label:<9} {running[image.label]:>16.3f} {copy[image.label]:>12.3f} "
              f"{running[image.label] / copy[image.label]:>7.3f}")
    ready = plain = None
    if ("ours", "ready") in results:
        ready = statistics.median([s.seconds for s in results["ours", "ready"]])
        plain = statistics.median([s.seconds for s in results["plain", "ready"]])
        print(f"api_to_ready_s {ready:.1f}   plain_qemu_ready_s {plain:.1f}   ratio {ready / plain:.3f}")
        guest = {side: statistics.median([s.detail["final_up_s"] for s in results[side, "ready"]]) for side in ("ours", "plain")}
        outside = {side: statistics.median([s.seconds - s.detail["final_up_s"] for s in results[side, "ready"]])
                   for side in ("ours", "plain")}
        print(f"  final_up_s: ours {guest['ours']:.1f}, plain {guest['plain']:.1f};   "
              f"outside_s: ours {outside['ours']:.1f}, plain {outside['plain']:.1f}")
    disturbed = sum(s.disturbed for samples in results.values() for s in samples)
    waited = f"waited {neighbours.waited_s:.0f} s in all for other users' QEMU and work" if neighbours.waited_s >= 1 \
        else "never had to wait for other users' QEMU or work"
    seen = f" ({len(neighbours.seen_pids)} other QEMU processes seen during the run)" if neighbours.seen_pids else ""
    print(f"# {waited}{seen}; {disturbed} disturbed sample(s) kept (their redos ran out); "
          f"load average now {os.getloadavg()[0]:.2f}")

    print("\n## targets")
    for image in images:
        value = running[image.label]
        print(f"api_to_running_{image.label} < {TARGET_RUNNING_S:g} s: {value:.3f} s  "
              f"{'PASS' if value < TARGET_RUNNING_S else 'FAIL'}")
    if len(images) == 2:
        small, large = images
        growth = running[large.label] / running[small.label]
        print(f"flat in image size: api_to_running_{large.label}/api_to_running_{small.label} = {growth:.2f} "
              f"(<= {TARGET_FLAT:g})  {'PASS' if growth <= TARGET_FLAT else 'FAIL'}")
        falls = running[large.label] / copy[large.label] < running[small.label] / copy[small.label]
        print(f"ratio against the full copy falls as the image grows: {'PASS' if falls else 'FAIL'}")
    if ready is not None:
        print(f"ready/plain_qemu <= {TARGET_READY_RATIO:g}: {ready / plain:.3f}  "
              f"{'PASS' if ready / plain <= TARGET_READY_RATIO else 'FAIL'}")

    print("\n## ratios")
    for image in images:
        print(f"api_to_running_{image.label} = {running[image.label]:.3f} s")
        print(f"full_copy_{image.label} = {copy[image.label]:.3f} s")
    if ready is not None:
        print(f"api_to_ready = {ready:.1f} s")
        print(f"plain_qemu_ready = {plain:.1f} s")
    for image in images:
        print(f"running/full_copy_{image.label} = {running[image.label] / copy[image.label]:.3f}")
    if ready is not None:
        print(f"ready/plain_qemu = {ready / plain:.3f}")
        print(f"outside_guest/plain_qemu = {outside['ours'] / outside['plain']:.3f}")


def main() -> int:
    args = parse_args()
    preflight(args)
    sys.stdout.reconfigure(line_buffering=True)  # progress shows through a pipe, too
    # SIGTERM unwinds like Ctrl-C, so the cleanup below runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    pid = os.getpid()
    host_name, mesh_queue = f"bench{pid}", f"bench-boot-mesh-{pid}"

    with contextlib.ExitStack() as cleanup:
        workdir = Path(tempfile.mkdtemp(prefix="ibb-"))
        cleanup.callback(shutil.rmtree, workdir, True)
        os.chmod(workdir, 0o711)  # the session daemon's user reaches its own directories in here
        for directory in ("storage", "cache"):
            (workdir / directory).mkdir(mode=0o755)

        daemon = SessionLibvirtd(workdir / "hv", args.libvirt_user)
        cleanup.callback(daemon.stop)
        daemon.own(workdir / "storage")
        os.chmod(workdir / "storage", 0o750)
        asgi_port = free_port()

        os.environ["INFRASIM_VAR_DIR"] = str(workdir / "var")
        for name in ("DATABASE_URL", "INFRASIM_MASTER_KEY", "INFRASIM_MASTER_KEY_FILE", "SECRET_KEY", "STATIC_ROOT"):
            os.environ.pop(name, None)
        os.environ.update({
            "DEBUG": "false", "LOG_LEVEL": "WARNING", "DJANGO_SETTINGS_MODULE": "infrasim_site.settings",
            "ALLOWED_HOSTS": "localhost,127.0.0.1,testserver",
            "APPLIANCE_PHONE_HOME_URL": f"http://10.0.2.2:{asgi_port}",
            "APPLIANCE_LOCAL_HOST": host_name, "APPLIANCE_LOCAL_LIBVIRT_URI": daemon.uri,
            "APPLIANCE_STORAGE_DIR": str(workdir / "storage"), "IMAGE_CACHE_DIR": str(workdir / "cache"),
            "WG_GATEWAY_QUEUE": mesh_queue,
        })
        redis_url, redis_note = os.environ.get("REDIS_URL", ""), "REDIS_URL"
        if not redis_url or not redis_answers(redis_url):
            redis_url, redis_process = start_private_redis(str(workdir))
            cleanup.callback(stop_process, redis_process)
            redis_note = "private redis-server"
        else:
            cleanup.callback(forget_queues, redis_url, [f"host.{host_name}", mesh_queue])
        os.environ["REDIS_URL"] = redis_url

        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)

        from celery.contrib.testing.worker import start_worker
        from django.test import Client

        from appliances import images as image_cache
        from appliances import jobs, services
        from appliances.models import CacheEntry, Template
        from infrasim_site.celery import app
        from infrasim_site.steps import StepStatus

        daemon.start()
        host = services.host_register_local()
        jobs.probe_host(host.pk)  # what the first create on a new host does; a one-time cost, untimed
        host.refresh_from_db()

        built = image_cache.build_local(BUILT_TEMPLATE, cache_dir=SHARED_IMAGE_CACHE)
        small = image_facts("2g", BUILT_TEMPLATE, built.disk, built.kernel, built.initrd)
        CacheEntry.objects.create(
            host=host, template=Template.objects.get(slug=BUILT_TEMPLATE), status=StepStatus.SUCCEEDED,
            digest=built.digest, disk_path=str(built.disk), disk_format=built.format, kernel_path=str(built.kernel),
            initrd_path=str(built.initrd), size=built.size, virtual_size=built.virtual_size,
        )
        images = [small]
        if args.large:
            print(f"# deriving the {args.large_gib} GiB template: writing {args.fill_gib} GiB of random data "
                  "with qemu-io (untimed)...", flush=True)
            disk = derive_large_image(small, workdir / "cache" / "derived", size_gib=args.large_gib,
                                      fill_gib=args.fill_gib)
            large = image_facts(f"{args.large_gib}g", LARGE_TEMPLATE, disk, built.kernel, built.initrd)
            register_large_template(host, large)
            images.append(large)

        user = make_user()
        client = Client()
        client.force_login(user, backend=SESSION_LOGIN_BACKEND)

        cleanup.enter_context(start_worker(
            app, pool="threads", concurrency=2, queues=[host.queue], perform_ping_check=False,
            shutdown_timeout=20, loglevel="WARNING",
        ))
        phone_home = None
        if not args.skip_ready:
            asgi = AsgiServer(asgi_port)
            asgi.start()
            cleanup.callback(asgi.stop)
            phone_home = PhoneHomeListener()
            phone_home.start()
            cleanup.callback(phone_home.stop)
        neighbours = Neighbours(workdir, args.wait_minutes * 60, args.idle_cpus)
        neighbours.start()
        cleanup.callback(neighbours.stop)

        qemu_version = run(["qemu-system-x86_64", "--version"]).splitlines()[0]
        print(f"# appliance boot benchmark: {os.cpu_count()} CPUs, {qemu_version}, "
              f"accel {host.acceleration} (session libvirtd as {args.libvirt_user}: {daemon.uri})")
        print(f"# SQLite under {workdir / 'var'}, Redis: {redis_note}, uvicorn on 127.0.0.1:{asgi_port}, "
              f"load average {os.getloadavg()[0]:.2f}")
        for image in images:
            print(f"# template {image.label} ({image.template}): {gib(image.virtual_size)} virtual, "
                  f"{gib(image.allocated)} of data in {image.disk}")
        print(f"# domains: {VCPUS} vCPU, {MEMORY_MIB} MiB, disk = the template's size; "
              f"medians of {args.runs} run(s), ours and the reference alternating")

        bench = Bench(args, workdir, daemon, host, client, phone_home)
        print("# warming up (untimed): one create -> running -> delete, and one full copy", flush=True)
        bench.ours_to_running(small)
        bench.full_copy_to_running(small)

        results: dict[tuple[str, str], list[Sample]] = {}
        print("\n## 1. API call -> domain running (ours: POST, Redis, a Celery worker thread, run_operation; "
              "reference: qemu-img convert + seed ISO + define and start)")
        print(f"{'run':>3} {'template':<8} {'side':<9} {'seconds':>8} | {'post_ms':>8} {'claim_ms':>8} {'job_ms':>8} "
              f"| {'copy_ms':>8} {'start_ms':>8} | {'disk_MiB':>8} {'busy_cpus':>9}")
        for image in images:
            for index in range(args.runs):
                sides = [("ours", bench.ours_to_running), ("copy", bench.full_copy_to_running)]
                for side, take in sides if index % 2 == 0 else sides[::-1]:
                    sample = measure(f"{side} {image.label}", neighbours, args.redo, lambda: take(image))
                    results.setdefault((side, image.label), []).append(sample)
                    d = sample.detail
                    cells = (f"{d['post_ms']:>8.1f} {d['claim_ms']:>8.1f} {d['job_ms']:>8.1f} | {'':>8} {'':>8}"
                             if side == "ours" else
                             f"{'':>8} {'':>8} {'':>8} | {d['copy_ms']:>8.1f} {d['start_ms']:>8.1f}")
                    print(f"{index + 1:>3} {image.label:<8} {'ours' if side == 'ours' else 'fullcopy':<9} "
                          f"{sample.seconds:>8.3f} | {cells} | {d['disk_mib']:>8.1f} {d['busy_cpus']:>9.2f}"
                          + ("  (disturbed)" if sample.disturbed else ""), flush=True)
        print("  post: the API request's round trip; claim: from the API call to the worker claiming the job "
              "(through Redis); job: from the claim to libvirt reporting the domain running; "
              "copy: qemu-img convert and the seed; disk: data the new disk file holds")

        if not args.skip_ready:
            print(f"\n## 2. API call -> ready (cloud-init's phone home), template {small.label}; "
                  "reference: plain qemu-system-x86_64 -accel tcg until a bare listener gets the POST")
            print(f"{'run':>3} {'side':<10} {'seconds':>8} {'started_s':>10} {'final_up_s':>11} {'outside_s':>10} "
                  f"{'busy_cpus':>10}")
            for index in range(args.runs):
                sides = [("ours", bench.ours_to_ready), ("plain", bench.plain_qemu_to_ready)]
                for side, take in sides if index % 2 == 0 else sides[::-1]:
                    sample = measure(f"{side} ready", neighbours, args.redo, lambda: take(small),
                                     max_busy_cpus=args.max_busy_cpus)
                    results.setdefault((side, "ready"), []).append(sample)
                    d = sample.detail
                    print(f"{index + 1:>3} {'ours' if side == 'ours' else 'plainqemu':<10} {sample.seconds:>8.1f} "
                          f"{d['started_s']:>10.2f} {d['final_up_s']:>11.1f} {sample.seconds - d['final_up_s']:>10.1f} "
                          f"{d['busy_cpus']:>10.2f}"
                          + ("  (disturbed)" if sample.disturbed else ""), flush=True)
            print("  started: ours, the create job done (domain started, `booting` recorded); plain, QEMU spawned "
                  "(overlay and seed made); final_up: the guest's uptime when cloud-init began its last stage, "
                  "from its serial log (it varies by seconds: the guest's RSA host key takes 4-12 s to find under "
                  "TCG); outside: the rest, from the API call to the guest's kernel, and from that stage to its "
                  "phone home arriving; busy_cpus: the machine's busy CPUs on average, everybody's")
        report(results, neighbours, images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
