#!/usr/bin/env python
"""Benchmark: building and verifying an appliance archive (appliances.archive).

Run from the project root:  .venv/bin/python bench/appliance_archive.py
(--quick for a smoke run: one run, a synthetic 512 MiB disk; --help for the knobs).

1. The disk. With the built Debian image in the image cache (the newest
   /var/cache/infrasim/blobs/*/disk.qcow2), a linked clone of it with a 2 GiB
   virtual size, as an appliance has; without one (or with --source synthetic),
   a 2 GiB raw disk with --fill-mib of mixed data (half random bytes, a quarter
   log-like text, a quarter zero-padded 4 KiB records, 1 MiB each, spread over
   the disk with holes between) converted to qcow2, and a linked clone of that.
   hypervisor.flatten of the clone makes the standalone disk.qcow2 the archive
   carries: what an export does before it writes the archive. Its time is
   printed for information.
2. Build. Ours: archive.write of disk.qcow2 and the four text members
   (a cloud-config built by appliances.cloudinit with WireGuard keys and the
   owner's own config, its meta-data, a wg0.conf from mesh.wgconf, main.tf from
   appliances.terraform) into a file. Reference: `tar czf` (GNU tar piping
   through gzip -6, the default) of the same member files laid out as in the
   archive, manifest.json included. Best of --runs, the two alternating. Neither
   fsyncs (an export does, after the archive is complete).
3. Verify. Ours: archive.verify_file of our archive (streamed: decompress, hash
   every member, check the manifest; nothing extracted), with the import caps.
   Reference: `sha256sum` of the same archive file, and (for information)
   `sha256sum` of the unpacked member files, which are the bytes verify hashes
   besides the archive's own.

Dropping the page cache needs root, so every file is read once before the
timed runs instead: both sides read from a warm cache. Dirty pages left by a
run are written back (os.sync, untimed) before the next one starts.

With --breakdown, or when a time target is missed, the time of both is broken
down, each part timed alone on the same bytes: reading the disk, SHA-256 (the
writer and the verifier both hash the disk and the archive), isal deflate fed
tarfile's 10 KiB records (what IGzipFile gets now) and 1 MiB pieces, isal
inflate, and what is left (copies and Python calls; negative where parts overlap).

Runs as any user who can read the image cache. No database: Django is set up
(appliances.cloudinit reads the cloud-config schema's path from the settings)
with a temporary INFRASIM_VAR_DIR. Everything lives in one temporary directory
(under TMPDIR; about three times the disk's file size), removed at the end, also
on errors, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import mmap
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

Result = TypeVar("Result")
MiB = 2**20
IMAGE_CACHE = Path("/var/cache/infrasim")
TARGET_BUILD_TIME_RATIO = 0.2
TARGET_BUILD_SIZE_RATIO = 1.05
TARGET_VERIFY_RATIO = 0.9
# What `tar czf` is given, in the archive's own layout.
TAR_OPERANDS = ("disk.qcow2", "cloud-init", "wireguard", "terraform", "manifest.json")
# tar and gzip read these from the environment; the reference is plain `tar czf`.
TAR_ENVIRONMENT_OVERRIDES = ("GZIP", "TAR_OPTIONS")
APPLIANCE_NAME = "web-frontend"
# The owner's own cloud-config, merged into ours as an appliance's would be.
OWNER_CLOUD_CONFIG = """\
#cloud-config
package_update: true
packages:
  - nginx
  - prometheus-node-exporter
  - unattended-upgrades
timezone: Europe/Amsterdam
write_files:
  - path: /etc/nginx/sites-available/default
    permissions: "0644"
    content: |
      server {
          listen 80 default_server;
          listen [::]:80 default_server;
          server_name _;
          root /var/www/html;
          index index.html;
          access_log /var/log/nginx/access.log combined buffer=32k flush=5s;
          location / {
              try_files $uri $uri/ =404;
          }
          location /healthz {
              access_log off;
              return 200 "ok\\n";
          }
          location /metrics {
              allow 100.64.0.0/10;
              deny all;
              proxy_pass http://127.0.0.1:9100/metrics;
          }
      }
  - path: /etc/apt/apt.conf.d/52unattended-upgrades-local
    permissions: "0644"
    content: |
      Unattended-Upgrade::Origins-Pattern {
          "origin=Debian,codename=${distro_codename},label=Debian-Security";
      };
      Unattended-Upgrade::Automatic-Reboot "true";
      Unattended-Upgrade::Automatic-Reboot-Time "04:30";
  - path: /var/www/html/index.html
    permissions: "0644"
    content: |
      <!doctype html>
      <html lang="en"><head><meta charset="utf-8"><title>web-frontend</title></head>
      <body><h1>web-frontend</h1><p>Served from an InfraSim appliance.</p></body></html>
runcmd:
  - [systemctl, enable, --now, nginx]
  - [systemctl, enable, --now, prometheus-node-exporter]
"""
# Words for the synthetic disk's text: paths, package names and log vocabulary.
TEXT_WORDS = (
    "systemd", "kernel", "usr", "lib", "share", "doc", "python3", "libc6", "x86_64-linux-gnu", "README",
    "copyright", "changelog.Debian.gz", "etc", "var", "log", "sshd", "cloud-init", "network", "interfaces",
    "ens3", "dhclient", "Started", "Reached", "target", "service", "Mounted", "module", "Accepted",
    "publickey", "for", "debian", "from", "port", "apt", "Unpacking", "Setting", "up", "Processing",
    "triggers", "man-db", "nginx", "GET", "/healthz", "HTTP/1.1", "200", "404", "wg-quick", "wg0",
)


# --- small helpers ------------------------------------------------------------------------


def mib(size: float) -> str:
    return f"{size / MiB:.1f} MiB"


def run(command: list[str], **kwargs) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} ... failed: {(result.stderr or result.stdout).strip()[-2000:]}")
    return result.stdout


def read_through(paths: list[Path]) -> None:
    """Read every byte once, so the timed runs find them in the page cache."""
    for path in paths:
        with open(path, "rb", buffering=0) as source:
            while source.read(8 * MiB):
                pass


def timed(action: Callable[[], Result]) -> tuple[float, Result]:
    """Seconds `action` took, and what it returned."""
    os.sync()  # the previous run's dirty pages are not this run's work
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


# --- the disk -----------------------------------------------------------------------------


def newest_cached_image(cache_dir: Path) -> Path | None:
    """The newest readable qcow2 in the image cache (images.py's blobs/<digest>/disk.qcow2)."""
    candidates = [path for path in (cache_dir / "blobs").glob("*/disk.qcow2") if os.access(path, os.R_OK)]
    return max(candidates, key=lambda path: path.stat().st_mtime, default=None)


def text_pool(rng: random.Random, size: int) -> bytes:
    """Log-like lines (what /var/log and /usr/share/doc hold): compressible
    about as much as a guest's text is."""
    lines: list[str] = []
    length = 0
    clock = 1_764_000_000
    while length < size:
        clock += rng.randrange(1, 90)
        words = " ".join(rng.choices(TEXT_WORDS, k=rng.randrange(4, 14)))
        line = f"{clock}.{rng.randrange(10**6):06d} {APPLIANCE_NAME} {rng.choice(TEXT_WORDS)}[{rng.randrange(1, 65536)}]: {words}\n"
        lines.append(line)
        length += len(line)
    return "".join(lines).encode()[:size]


def records_chunk(rng: random.Random) -> bytes:
    """4 KiB records with a few dozen bytes of content and zeros after them,
    like a filesystem's inode tables and allocation bitmaps."""
    parts = []
    for block in range(MiB // 4096):
        header = struct.pack("<4I", block, rng.randrange(2**32), 0x1ED, rng.randrange(1, 9)) + rng.randbytes(48)
        parts.append(header + bytes(4096 - len(header)))
    return b"".join(parts)


def write_mixed_raw(path: Path, virtual_bytes: int, fill_bytes: int, seed: int = 20261125) -> None:
    """A sparse raw disk of `virtual_bytes` with `fill_bytes` of data in 1 MiB
    chunks spread evenly over it: half random bytes (compressed packages,
    keys), a quarter text, a quarter zero-padded records. Seeded: every run of
    the bench compresses the same bytes."""
    rng = random.Random(seed)
    pool = text_pool(rng, 8 * MiB)
    chunks = max(1, fill_bytes // MiB)
    stride = max(1, virtual_bytes // MiB // chunks)
    with open(path, "wb") as raw:
        raw.truncate(virtual_bytes)
        for index in range(chunks):
            kind = index % 4
            if kind in (0, 1):
                chunk = rng.randbytes(MiB)
            elif kind == 2:
                start = rng.randrange(len(pool) - MiB)
                chunk = pool[start:start + MiB]
            else:
                chunk = records_chunk(rng)
            raw.seek(index * stride * MiB)
            raw.write(chunk)


@dataclass(frozen=True)
class Disk:
    clone: Path  # the linked clone an appliance runs on
    source: str  # where its data came from, for the report
    image_digest: str  # for the manifest
    virtual_size: int


def prepare_disk(workdir: Path, args: argparse.Namespace) -> Disk:
    """A linked clone, as an appliance's disk is, on the cached image or on a
    synthetic base (untimed)."""
    from appliances import hypervisor

    wanted = args.disk_mib * MiB
    cached = newest_cached_image(args.image_cache) if args.source in ("auto", "cache") else None
    if args.source == "cache" and cached is None:
        raise SystemExit(f"no readable {args.image_cache}/blobs/*/disk.qcow2 (--source cache)")
    if cached is not None:
        base, base_size = cached, int(hypervisor.image_info(cached, "qcow2")["virtual-size"])
        source = f"image cache: {cached} ({base_size / 2**30:.2f} GiB virtual)"
        image_digest = cached.parent.name
    else:
        fill = min(args.fill_mib * MiB, wanted)
        print(f"# writing a synthetic {mib(wanted)} disk with {mib(fill)} of mixed data (untimed)...", flush=True)
        raw = workdir / "synthetic.raw"
        write_mixed_raw(raw, wanted, fill)
        base = workdir / "synthetic.qcow2"
        run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(base)])
        raw.unlink()
        base_size = wanted
        source = f"synthetic: {mib(fill)} of mixed data in a {mib(wanted)} disk (no cached image used)"
        image_digest = "synthetic"
    clone = workdir / "clone.qcow2"
    size = max(wanted, base_size)  # a clone cannot be smaller than its image
    hypervisor.create_overlay(backing=base, backing_format="qcow2", path=clone, size_bytes=size)
    return Disk(clone=clone, source=source, image_digest=image_digest, virtual_size=size)


# --- the text members ---------------------------------------------------------------------


def ssh_public_key(comment: str) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode() + f" {comment}"


def text_members(virtual_size: int) -> dict[str, str]:
    """The four small members of an export with secrets, made by the code the
    export job uses (appliances.jobs._export), from made-up appliance facts."""
    from appliances import archive, cloudinit, terraform
    from mesh import keys, wgconf

    hostname = cloudinit.hostname_for(APPLIANCE_NAME)
    private_key, _ = keys.generate_keypair()
    _, gateway_public_key = keys.generate_keypair()
    wg0_conf = wgconf.peer_config(
        name=f"appliance-{hostname}", private_key=private_key, ipv4="100.96.0.12", ipv6="fd7a:115c:a1e0::c",
        gateway_public_key=gateway_public_key, preshared_key=keys.generate_preshared_key(),
        endpoint="10.0.2.2:51820", allowed_ips=["100.96.0.0/16", "fd7a:115c:a1e0::/48"], keepalive=25,
    )
    user_data = cloudinit.build_user_data(
        hostname=hostname,
        ssh_authorized_keys=[ssh_public_key("ops@laptop"), ssh_public_key("deploy@ci")],
        wg0_conf=wg0_conf,
        phone_home_url=f"http://10.0.2.2:8000/api/meshnet/appliances/12/phone-home/{uuid.uuid4().hex}",
        user_config=cloudinit.parse_cloud_config(OWNER_CLOUD_CONFIG),
    )
    return {
        archive.USER_DATA: user_data,
        archive.META_DATA: cloudinit.build_meta_data(instance_id=f"i-{uuid.uuid4().hex[:17]}", hostname=hostname),
        archive.WG0_CONF: wg0_conf,
        archive.MAIN_TF: terraform.render_main_tf(terraform.TerraformSpec(
            name=APPLIANCE_NAME, vcpus=2, memory_mib=2048, disk_bytes=virtual_size, os="Debian 12 (bookworm)",
        )),
    }


def manifest_for(virtual_size: int, state_at: int, image_digest: str) -> dict:
    """The manifest an export starts from (appliances.jobs._export); the
    writer fills in `files`."""
    from django.conf import settings

    from appliances import archive

    return {
        "format": archive.FORMAT,
        "infrasim_version": settings.INFRASIM_VERSION,
        "created_at": archive.iso_time(state_at),
        "appliance": {
            "name": APPLIANCE_NAME, "template": "debian-bookworm-local", "image_digest": image_digest,
            "os": "Debian 12 (bookworm)", "vcpus": 2, "memory_mib": 2048,
            "disk_gib": -(-virtual_size // 2**30), "disk_virtual_size": virtual_size,
        },
        "consistency": {"method": "stopped"},
        "secrets_included": True,
        "redacted": [],
        "disk_note": "disk.qcow2 is the guest's disk as the guest left it, with whatever it stores "
                     "(its SSH host keys, and the WireGuard key in /etc/wireguard/wg0.conf).",
    }


def lay_out_members(members: Path, texts: dict[str, str], manifest: bytes) -> None:
    """The text members and manifest.json beside disk.qcow2, as `tar xzf` of
    our archive would leave them, for the reference to pack."""
    from appliances import archive

    for name, text in texts.items():
        path = members / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        path.chmod(archive.MODES.get(name, archive.DEFAULT_MODE))
    (members / archive.MANIFEST).write_bytes(manifest)


# --- the breakdown ------------------------------------------------------------------------


@dataclass(frozen=True)
class Parts:
    """The work inside archive.write and archive.verify_file, each part timed
    alone on the same bytes (best of the runs)."""

    read_s: float  # disk.qcow2 from the page cache in 1 MiB reads
    sha256_s: float  # SHA-256 of disk.qcow2 and of the archive: both the writer and the verifier compute both
    deflate_records_s: float  # isal at the archive's level, fed tarfile's 10 KiB records (what IGzipFile gets now)
    deflate_chunks_s: float  # the same fed 1 MiB at a time
    inflate_s: float  # IGzipFile reading the archive back in 1 MiB reads


def measure_parts(disk: Path, archive_path: Path, runs: int) -> Parts:
    from isal import igzip, isal_zlib

    from appliances import archive

    def read_all(opened: Callable[[], BinaryIO]) -> Callable[[], None]:
        def read() -> None:
            with opened() as source:
                while source.read(archive.COPY_CHUNK):
                    pass
        return read

    with open(disk, "rb") as disk_file, open(archive_path, "rb") as archive_file, \
            mmap.mmap(disk_file.fileno(), 0, access=mmap.ACCESS_READ) as disk_map, \
            mmap.mmap(archive_file.fileno(), 0, access=mmap.ACCESS_READ) as archive_map:
        # Views of the mapped page cache: the parts below copy nothing to get their input.
        disk_view, archive_view = memoryview(disk_map), memoryview(archive_map)

        def hash_both() -> None:
            for view in (disk_view, archive_view):
                digest = hashlib.sha256()
                for start in range(0, len(view), archive.COPY_CHUNK):
                    digest.update(view[start:start + archive.COPY_CHUNK])

        def deflate(piece: int) -> Callable[[], None]:
            def compress() -> None:
                compressor = isal_zlib.compressobj(archive.COMPRESS_LEVEL, isal_zlib.DEFLATED, -isal_zlib.MAX_WBITS)
                crc = 0
                for start in range(0, len(disk_view), piece):
                    data = disk_view[start:start + piece]
                    crc = isal_zlib.crc32(data, crc)  # IGzipFile checksums every write
                    compressor.compress(data)
                compressor.flush()
            return compress

        def best(action: Callable[[], None]) -> float:
            return min(timed(action)[0] for _ in range(runs))

        parts = Parts(
            read_s=best(read_all(lambda: open(disk, "rb", buffering=0))),
            sha256_s=best(hash_both),
            deflate_records_s=best(deflate(tarfile.RECORDSIZE)),
            deflate_chunks_s=best(deflate(MiB)),
            inflate_s=best(read_all(lambda: igzip.IGzipFile(archive_path, "rb"))),
        )
        del disk_view, archive_view  # an mmap cannot close while a view of it lives
    return parts


def print_breakdown(parts: Parts, *, write_s: float, verify_s: float, sha256sum_s: float) -> None:
    from appliances import archive

    level = archive.COMPRESS_LEVEL
    rows = (
        ("archive.write", write_s, None),
        ("  read disk.qcow2 (page cache, 1 MiB reads)", parts.read_s, None),
        ("  SHA-256 of disk.qcow2 and of the archive", parts.sha256_s, None),
        # archive.py deflates in igzip's writer thread and hashes in a thread
        # while verifying, so the parts overlap: "rest" is negative when they do.
        (f"  isal deflate level {level}, 1 MiB writes (in the writer's own thread)",
         parts.deflate_chunks_s, f"fed 10 KiB writes: {parts.deflate_records_s:.2f} s"),
        ("  rest (negative: the parts overlapped)", write_s - parts.read_s - parts.sha256_s
         - parts.deflate_chunks_s, None),
        ("archive.verify_file", verify_s, None),
        ("  isal inflate (IGzipFile, 1 MiB reads)", parts.inflate_s, None),
        ("  SHA-256 of the members and of the archive", parts.sha256_s, None),
        ("  rest (negative: the parts overlapped)", verify_s - parts.inflate_s - parts.sha256_s, None),
        ("sha256sum of the archive (the reference)", sha256sum_s, None),
    )
    for label, seconds, note in rows:
        print(f"{label:62s} {seconds:6.2f} s" + (f"  ({note})" if note else ""))


# --- main ---------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each side; the best counts (3)")
    parser.add_argument("--quick", action="store_true", help="one run, a synthetic 512 MiB disk with 150 MiB of data")
    parser.add_argument("--source", choices=("auto", "cache", "synthetic"), default="auto",
                        help="the disk's data: the cached image if there is one (auto), or always one of the two")
    parser.add_argument("--disk-mib", type=int, default=2048, help="the disk's virtual size (2048)")
    parser.add_argument("--fill-mib", type=int, default=600, help="data in a synthetic disk (600)")
    parser.add_argument("--image-cache", type=Path, default=IMAGE_CACHE, help=f"({IMAGE_CACHE})")
    parser.add_argument("--breakdown", action="store_true",
                        help="break the times down even when they meet their targets")
    args = parser.parse_args()
    if args.quick:
        # The cached image is 2 GiB and a clone cannot be smaller, so a quick
        # run makes its own small disk.
        args.runs, args.disk_mib, args.fill_mib, args.source = 1, 512, 150, "synthetic"
    if args.runs < 1 or args.disk_mib < 1 or args.fill_mib < 1:
        parser.error("--runs, --disk-mib and --fill-mib must be positive")
    return args


def preflight() -> None:
    for tool in ("qemu-img", "tar", "gzip", "sha256sum"):
        if shutil.which(tool) is None:
            raise SystemExit(f"`{tool}` is not installed (qemu-utils, tar, gzip, coreutils)")


def setup_django(workdir: Path) -> None:
    os.environ["INFRASIM_VAR_DIR"] = str(workdir / "var")
    for name in ("DATABASE_URL", "INFRASIM_MASTER_KEY", "INFRASIM_MASTER_KEY_FILE", "SECRET_KEY", "STATIC_ROOT"):
        os.environ.pop(name, None)
    os.environ.update({"DEBUG": "false", "LOG_LEVEL": "WARNING", "DJANGO_SETTINGS_MODULE": "infrasim_site.settings"})
    import django

    django.setup()


def backing_chain(image: Path) -> list[Path]:
    """The files under a linked clone, to read before timing."""
    from appliances import hypervisor

    chain = []
    info = hypervisor.image_info(image)
    while info.get("full-backing-filename"):
        chain.append(Path(info["full-backing-filename"]))
        info = hypervisor.image_info(chain[-1])
    return chain


def bench(workdir: Path, args: argparse.Namespace) -> None:
    from appliances import archive, exports, hypervisor

    disk = prepare_disk(workdir, args)
    members = workdir / "members"
    members.mkdir()
    flat = members / archive.DISK

    # Flatten, the export's step before the archive. The first run makes the
    # archive's disk; the others go to a scratch file, removed untimed.
    read_through([disk.clone, *backing_chain(disk.clone)])
    flatten_s = [timed(lambda: hypervisor.flatten(disk.clone, flat))[0]]
    for _ in range(args.runs - 1):
        scratch = workdir / "flatten-again.qcow2"
        flatten_s.append(timed(lambda: hypervisor.flatten(disk.clone, scratch))[0])
        scratch.unlink()
    disk_bytes = flat.stat().st_size

    state_at = int(time.time())
    texts = text_members(disk.virtual_size)
    manifest = manifest_for(disk.virtual_size, state_at, disk.image_digest)
    ours_path, reference_path = workdir / "ours.tar.gz", workdir / "reference.tar.gz"
    tar_environment = {key: value for key, value in os.environ.items() if key not in TAR_ENVIRONMENT_OVERRIDES}
    tar_environment["LC_ALL"] = "C"

    def write_ours() -> archive.Written:
        ours_path.unlink(missing_ok=True)  # as tar, each run starts with its output gone
        with open(ours_path, "wb") as output:
            return archive.write(output, disk=flat, texts=texts, manifest=manifest, mtime=state_at)

    def write_reference() -> None:
        reference_path.unlink(missing_ok=True)
        run(["tar", "czf", str(reference_path), *TAR_OPERANDS], cwd=members, env=tar_environment)

    first = write_ours()  # untimed: its manifest is the reference's manifest.json
    lay_out_members(members, texts, archive.manifest_bytes(first.manifest))
    member_names = [*archive.MEMBERS, archive.MANIFEST]
    member_bytes = sum((members / name).stat().st_size for name in member_names)

    print(f"# source: {disk.source}")
    print(f"# disk.qcow2: {mib(disk_bytes)} file ({disk_bytes} bytes), {disk.virtual_size / 2**30:.2f} GiB virtual; "
          f"text members and manifest.json: {(member_bytes - disk_bytes) / 1024:.1f} KiB")
    print("# page cache: every file was read once before timing, so both sides read from a warm cache "
          "(dropping it needs root); os.sync before each run, untimed")
    print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start")

    print(f"\n## flatten (hypervisor.flatten of the linked clone; best of {args.runs}, for information)")
    print(f"flatten  {min(flatten_s):7.2f} s  {disk_bytes / MiB / min(flatten_s):6.0f} MiB/s written")

    # Build: ours and tar alternating, so both see the same drift in load.
    read_through([members / name for name in member_names])
    ours_s: list[float] = []
    tar_s: list[float] = []
    written = [first]
    for index in range(args.runs):
        for side in (("ours", "tar") if index % 2 == 0 else ("tar", "ours")):
            if side == "ours":
                seconds, result = timed(write_ours)
                ours_s.append(seconds)
                written.append(result)
            else:
                tar_s.append(timed(write_reference)[0])
    if len({result.sha256 for result in written}) != 1:
        raise RuntimeError("archive.write gave different bytes for the same inputs")
    ours_size, reference_size = written[0].size, reference_path.stat().st_size
    build_time_ratio = min(ours_s) / min(tar_s)
    build_size_ratio = ours_size / reference_size

    print(f"\n## build (best of {args.runs}, ours and tar alternating; {mib(member_bytes)} of members)")
    print(f"{'':14s} {'seconds':>8s} {'MiB/s':>7s} {'archive':>11s}")
    for label, seconds, size, note in (
        ("archive.write", ours_s, ours_size, f"isal level {archive.COMPRESS_LEVEL}"),
        ("tar czf", tar_s, reference_size, "gzip -6"),
    ):
        print(f"{label:14s} {min(seconds):8.2f} {member_bytes / MiB / min(seconds):7.0f} {mib(size):>11s}  "
              f"({note}; runs {', '.join(f'{value:.2f}' for value in seconds)})")
    print(f"reproducible: all {len(written)} archives are the same bytes (sha256 {written[0].sha256[:16]}...)")
    print(f"build_time_ratio {build_time_ratio:.3f} <= {TARGET_BUILD_TIME_RATIO}: "
          f"{verdict(build_time_ratio <= TARGET_BUILD_TIME_RATIO)}")
    print(f"build_size_ratio {build_size_ratio:.3f} <= {TARGET_BUILD_SIZE_RATIO}: "
          f"{verdict(build_size_ratio <= TARGET_BUILD_SIZE_RATIO)}")

    # Verify, with the import caps, against sha256sum of the same file and of the members.
    limits = exports.import_limits()
    read_through([ours_path])
    samples: dict[str, list[float]] = {"archive.verify_file": [], "sha256sum archive": [], "sha256sum members": []}
    actions: dict[str, Callable[[], object]] = {
        "archive.verify_file": lambda: archive.verify_file(ours_path, limits=limits),
        "sha256sum archive": lambda: run(["sha256sum", str(ours_path)]),
        "sha256sum members": lambda: run(["sha256sum", *member_names], cwd=members),
    }
    for index in range(args.runs):
        for label in (list(actions) if index % 2 == 0 else list(actions)[::-1]):
            seconds, result = timed(actions[label])
            samples[label].append(seconds)
            if isinstance(result, archive.Verified) and (result.sha256 != written[0].sha256
                                                          or result.manifest != written[0].manifest):
                raise RuntimeError("archive.verify_file read back something other than what archive.write wrote")
    best = {label: min(values) for label, values in samples.items()}
    verify_ratio = best["sha256sum archive"] / best["archive.verify_file"]
    verify_members_ratio = best["sha256sum members"] / best["archive.verify_file"]

    print(f"\n## verify (best of {args.runs}, alternating; archive {mib(ours_size)}, unpacked {mib(member_bytes)})")
    print(f"{'':20s} {'seconds':>8s} {'archive MiB/s':>14s} {'unpacked MiB/s':>15s}")
    for label, seconds in best.items():
        print(f"{label:20s} {seconds:8.2f} {ours_size / MiB / seconds:14.0f} {member_bytes / MiB / seconds:15.0f}  "
              f"(runs {', '.join(f'{value:.2f}' for value in samples[label])})")
    print(f"verify_vs_sha256sum_archive {verify_ratio:.3f} >= {TARGET_VERIFY_RATIO}: "
          f"{verdict(verify_ratio >= TARGET_VERIFY_RATIO)}")
    print(f"verify_vs_sha256sum_members {verify_members_ratio:.3f} (for information: the bytes verify hashes)")

    if args.breakdown or build_time_ratio > TARGET_BUILD_TIME_RATIO or verify_ratio < TARGET_VERIFY_RATIO:
        print(f"\n## where the time goes (each part alone on the same bytes, best of {args.runs})")
        print_breakdown(measure_parts(flat, ours_path, args.runs), write_s=min(ours_s),
                        verify_s=best["archive.verify_file"], sha256sum_s=best["sha256sum archive"])

    print("\n## ratios")
    print(f"build_time_ratio = {build_time_ratio:.3f}")
    print(f"build_size_ratio = {build_size_ratio:.3f}")
    print(f"verify_vs_sha256sum_archive = {verify_ratio:.3f}")
    print(f"verify_vs_sha256sum_members = {verify_members_ratio:.3f}")


def main() -> int:
    args = parse_args()
    preflight()
    sys.stdout.reconfigure(line_buffering=True)  # progress shows through a pipe, too
    # SIGTERM unwinds like Ctrl-C, so the cleanup below runs; and SIGINT
    # raises KeyboardInterrupt even when a shell started us in the background
    # with it ignored.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with contextlib.ExitStack() as cleanup:
            workdir = Path(tempfile.mkdtemp(prefix="iba-"))
            cleanup.callback(shutil.rmtree, workdir, True)
            setup_django(workdir)
            bench(workdir, args)
    except KeyboardInterrupt:
        print("interrupted; the temporary directory is removed", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
