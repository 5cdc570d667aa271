#!/usr/bin/env python
"""Benchmark: acquiring a running guest's memory (forensics.memory_dump.acquire).

Run as root from the project root:  .venv/bin/python bench/memory_acquisition.py
(--quick for a smoke run: one run, the 1 GiB guest only; --help for the knobs).

For diskless guests of 1 GiB and 4 GiB of RAM (TCG, SeaBIOS with nothing to
boot), each run measures, alternating:
- ours: the whole capture as the worker runs it: `memory_dump.acquire` of the
  guest as ELF into a file (libvirt's dump into a FIFO, every byte hashed
  with SHA-256 as it arrives and written, the file fsynced and renamed), then
  the in-toto statement signed into a DSSE envelope (Ed25519) and the
  attestation appended to the transparency log (`ledger.record`, on a
  scratch SQLite database set up as bench/transparency_log.py does);
- virsh-dump: `virsh dump --memory-only --format elf` of the same guest into a
  file (libvirt's iohelper writes it and fdatasyncs it);
- virsh-dump+sha256sum: that, then `sha256sum` of the file (what hashing
  afterwards costs: a second pass over the dump).
Medians of --runs, then the ratios `acquisition/virsh-dump` (target <= 1.10)
and `acquisition/virsh-dump+sha256sum` (target < 1) for each size, last.

The guests' memory would otherwise be zero pages, which QEMU reads from one
page the CPU keeps in cache: the fastest case for QEMU, and the hardest for a
reader that hashes. QEMU's generic loader (`-device loader`, through
<qemu:commandline>) copies --fill-fraction of the RAM (default 0.5) of random
bytes into the guest before it starts, so QEMU has real memory to read.

Root's qemu:///session is the system daemon's socket, which this machine does
not run, so the bench starts a session libvirtd as --libvirt-user (default
nobody) with appliances.sessiond, as `make run` and the tests do. Everything
lives in a temporary directory under TMPDIR (the guests' fill files and one
dump at a time: about 1.5 times the largest guest's RAM); the guests, the
daemon and what it spawned are removed at the end, also on errors, Ctrl-C
and SIGTERM. Dirty pages of a run are written back (os.sync, untimed) before
the next one starts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliances import hypervisor  # noqa: E402  (needs ROOT on the path)
from appliances.sessiond import DAEMON, SessionDaemon  # noqa: E402
from bench.transparency_log import setup_django  # noqa: E402
from forensics import memory_dump  # noqa: E402

MIB = 1 << 20
FILL_ADDRESS = 16 * MIB  # above SeaBIOS and the legacy ROM area
FILL_PIECE_MIB = 1024  # QEMU reads a loader's file in one read(), which Linux caps just below 2 GiB
LOW_MEMORY_MIB = 3072  # the pc machine maps at most 3 GiB below 4 GiB when the guest has more than 3.5
TARGET_VIRSH = 1.10
TARGET_VIRSH_SHA = 1.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[1024, 4096], help="guest RAM sizes (MiB)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each measurement per size (median)")
    parser.add_argument("--fill-fraction", type=float, default=0.5,
                        help="share of the guest's RAM filled with random bytes before it starts (0 to 0.75)")
    parser.add_argument("--libvirt-user", default="nobody", help="Unix user of the session libvirtd (default nobody)")
    parser.add_argument("--quick", action="store_true", help="one run, the 1 GiB guest only")
    args = parser.parse_args()
    if args.quick:
        args.sizes_mib, args.runs = [1024], 1
    if not 0 <= args.fill_fraction <= 0.75:
        parser.error("--fill-fraction must be between 0 and 0.75")
    return args


def preflight(args: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        raise SystemExit("run as root: the bench starts a session libvirtd as another user and hands it a FIFO")
    missing = [tool for tool in ("libvirtd", "virsh", "qemu-system-x86_64", "sha256sum") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"missing: {', '.join(missing)} (Debian: libvirt-daemon libvirt-clients qemu-system-x86)")
    try:
        pwd.getpwnam(args.libvirt_user)
    except KeyError:
        raise SystemExit(f"there is no Unix user {args.libvirt_user!r} (--libvirt-user)") from None


# --- the hypervisor -----------------------------------------------------------------------


class Daemon:
    """A session libvirtd of an unprivileged user, as appliances.sessiond runs one."""

    def __init__(self, home: Path, user: str):
        self.session = SessionDaemon(home, user)
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return self.session.uri

    def start(self) -> None:
        account = self.session.prepare()
        with open(self.session.log, "ab") as log:
            self.process = subprocess.Popen(
                DAEMON, env=self.session.environment(), cwd=self.session.home, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                user=account.pw_uid, group=account.pw_gid, extra_groups=[],
            )
        deadline = time.monotonic() + 20
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"libvirtd exited: {self.session.log.read_text()[-2000:]}")
            try:
                hypervisor.connect(self.uri).close()
                return
            except hypervisor.HypervisorError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the session libvirtd did not answer within 20 s") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Its guests, then the daemon; its reaper takes virtlogd and any QEMU left."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            with hypervisor.connection(self.uri) as conn:
                for domain in hypervisor.list_domains(conn):
                    hypervisor.undefine(conn, domain["uuid"])
        finally:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def guest_xml(name: str, uuid_: str, memory_mib: int, fills: list[Path]) -> str:
    """A diskless guest; each fill file is loaded into its RAM, one after another from FILL_ADDRESS."""
    arguments = "".join(
        f"<qemu:arg value='-device'/>"
        f"<qemu:arg value='loader,file={fill},addr={FILL_ADDRESS + index * FILL_PIECE_MIB * MIB:#x},force-raw=on'/>"
        for index, fill in enumerate(fills))
    return f"""<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <uuid>{uuid_}</uuid>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>{arguments}</qemu:commandline>
</domain>
"""


def write_fills(workdir: Path, memory_mib: int, fill_mib: int) -> list[Path]:
    """Random bytes in files of at most FILL_PIECE_MIB, readable by the daemon's user."""
    fills = []
    for index, start in enumerate(range(0, fill_mib, FILL_PIECE_MIB)):
        path = workdir / f"fill-{memory_mib}-{index}.bin"
        with open(path, "wb") as out:
            for _ in range(min(FILL_PIECE_MIB, fill_mib - start)):
                out.write(os.urandom(MIB))
        os.chmod(path, 0o644)
        fills.append(path)
    return fills


# --- measuring ----------------------------------------------------------------------------


def capture(conn, guest: str, destination: Path, key) -> memory_dump.DumpResult:
    """Dump, hash, sign and log: what the capture job does, minus the database rows around it."""
    import hashlib

    from forensics import ledger
    from forensics.offline_verify import ATTESTATION_KIND, PREDICATE_TYPE, STATEMENT_TYPE
    from forensics.signatures import canonical_json, sign_envelope

    result = memory_dump.acquire(conn, guest, destination=destination)
    payload = canonical_json({
        "_type": STATEMENT_TYPE, "predicateType": PREDICATE_TYPE,
        "subject": [{"name": destination.name, "digest": {"sha256": result.sha256}}],
        "predicate": {"evidence": {"size": result.size, "sha256": result.sha256}, "arguments": result.arguments},
    })
    envelope = sign_envelope(payload, key)
    ledger.record(kind=ATTESTATION_KIND, actor="system", subject="bench:memory", payload={
        "subject_sha256": result.sha256, "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "keyid": envelope["signatures"][0]["keyid"]})
    return result


def timed(action):
    """(seconds, what `action` returned), after writing back what earlier runs left dirty."""
    os.sync()
    began = time.perf_counter()
    value = action()
    return time.perf_counter() - began, value


def run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed: {(result.stderr or result.stdout).strip()[-2000:]}")


def measure_size(daemon: Daemon, workdir: Path, memory_mib: int, args: argparse.Namespace) -> dict[str, list[float]]:
    fill_mib = min(int(memory_mib * args.fill_fraction), LOW_MEMORY_MIB - FILL_ADDRESS // MIB)
    fills = write_fills(workdir, memory_mib, fill_mib)
    name, guest = f"bench-dump-{memory_mib}-{os.getpid()}", str(uuid.uuid4())
    ours_file, virsh_file = workdir / "ours" / "memory.elf", daemon.session.storage_dir / "memory.elf"
    times: dict[str, list[float]] = {"ours": [], "virsh-dump": [], "virsh-dump+sha256sum": []}
    import nacl.signing

    key = nacl.signing.SigningKey.generate()
    with hypervisor.connection(daemon.uri) as conn:
        conn.defineXML(guest_xml(name, guest, memory_mib, fills)).create()
        try:
            time.sleep(1)  # SeaBIOS has looked for something to boot and idles
            print(f"{memory_mib} MiB guest, {fill_mib} MiB of it random bytes:")
            for index in range(args.runs):
                ours, result = timed(lambda: capture(conn, guest, ours_file, key))
                if index == 0:
                    check = subprocess.run(["sha256sum", str(ours_file)], capture_output=True, text=True, check=True)
                    if check.stdout.split()[0] != result.sha256:
                        raise RuntimeError("our SHA-256 differs from sha256sum's of the same file")
                ours_file.unlink()
                virsh, _ = timed(lambda: run(["virsh", "-q", "-c", daemon.uri, "dump", "--memory-only",
                                           "--format", "elf", name, str(virsh_file)]))
                sha, _ = timed(lambda: run(["sha256sum", str(virsh_file)]))
                virsh_file.unlink()
                times["ours"].append(ours)
                times["virsh-dump"].append(virsh)
                times["virsh-dump+sha256sum"].append(virsh + sha)
                print(f"  run {index + 1}: ours {ours:.3f} s ({result.size / MIB / ours:.0f} MiB/s), "
                      f"virsh dump {virsh:.3f} s, sha256sum {sha:.3f} s")
        finally:
            hypervisor.undefine(conn, guest)
            for fill in fills:
                fill.unlink()
    return times


def report(results: dict[int, dict[str, list[float]]], args: argparse.Namespace) -> None:
    print(f"\nmedians of {args.runs} run(s), seconds (load average {os.getloadavg()[0]:.2f}):")
    print(f"{'guest':>8} {'ours':>8} {'virsh-dump':>11} {'virsh-dump+sha256sum':>21}")
    for memory_mib, times in results.items():
        medians = {key: statistics.median(values) for key, values in times.items()}
        print(f"{memory_mib // 1024:>5} GiB {medians['ours']:>8.3f} {medians['virsh-dump']:>11.3f} "
              f"{medians['virsh-dump+sha256sum']:>21.3f}")
    verdicts = []
    for memory_mib, times in results.items():
        ours = statistics.median(times["ours"])
        to_virsh = ours / statistics.median(times["virsh-dump"])
        to_virsh_sha = ours / statistics.median(times["virsh-dump+sha256sum"])
        label = f"{memory_mib // 1024}GiB"
        verdicts.append(f"{'PASS' if to_virsh <= TARGET_VIRSH else 'FAIL'} acquisition/virsh-dump_{label} "
                        f"<= {TARGET_VIRSH}")
        verdicts.append(f"{'PASS' if to_virsh_sha < TARGET_VIRSH_SHA else 'FAIL'} "
                        f"acquisition/virsh-dump+sha256sum_{label} < {TARGET_VIRSH_SHA}")
        print(f"acquisition/virsh-dump_{label} = {to_virsh:.3f}")
        print(f"acquisition/virsh-dump+sha256sum_{label} = {to_virsh_sha:.3f}")
    print("\n".join(verdicts))


def main() -> int:
    args = parse_args()
    preflight(args)
    sys.stdout.reconfigure(line_buffering=True)  # progress shows through a pipe, too
    # SIGTERM unwinds like Ctrl-C, so the cleanup below runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with contextlib.ExitStack() as cleanup:
            workdir = Path(tempfile.mkdtemp(prefix="ima-"))
            cleanup.callback(shutil.rmtree, workdir, True)
            os.chmod(workdir, 0o711)  # the daemon's user reaches its home and the fill files in here
            (workdir / "ours").mkdir(mode=0o700)
            setup_django(workdir, None)
            daemon = Daemon(workdir / "hv", args.libvirt_user)
            cleanup.callback(daemon.stop)
            daemon.start()
            results = {memory_mib: measure_size(daemon, workdir, memory_mib, args) for memory_mib in args.sizes_mib}
            report(results, args)
    except KeyboardInterrupt:
        print("interrupted; the guests, the daemon and the temporary directory are removed", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
