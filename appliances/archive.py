"""The appliance archive format, `infrasim-appliance/1`: writing and verifying.

    disk.qcow2            standalone qcow2 (no backing file, no external data file)
    cloud-init/user-data
    cloud-init/meta-data
    wireguard/wg0.conf
    terraform/main.tf
    manifest.json         last: every other member's size and SHA-256

Reproducible: the same inputs give the same bytes. Members go in the fixed
order above with fixed owners (0/0, no names), modes and one mtime (the
appliance state's time), in POSIX pax format (which adds a header only for a
member above 8 GiB), inside a gzip stream with no file name and mtime 0.
igzip (ISA-L) deflates about ten times faster than zlib's level 6, and its
output is plain gzip that `tar xzf` reads.

Both directions stream: the writer hashes each member as it copies it into
the tar stream, and the verifier hashes each member as it comes out of it,
counting every decompressed byte against caps, so a hostile archive costs at
most the caps in time and disk, never in memory.

This module knows only files and bytes; what goes into the members is the
jobs' and services' business.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import queue
import re
import struct
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from isal import igzip, igzip_threaded
from isal.igzip_lib import IsalError

FORMAT = "infrasim-appliance/1"
DISK = "disk.qcow2"
USER_DATA = "cloud-init/user-data"
META_DATA = "cloud-init/meta-data"
WG0_CONF = "wireguard/wg0.conf"
MAIN_TF = "terraform/main.tf"
MANIFEST = "manifest.json"
# Members in archive order; the manifest comes last.
MEMBERS = (DISK, USER_DATA, META_DATA, WG0_CONF, MAIN_TF)
# user-data and wg0.conf may carry keys; only their owner reads them once extracted.
MODES = {USER_DATA: 0o600, WG0_CONF: 0o600}
DEFAULT_MODE = 0o644
COPY_CHUNK = 1 << 20
INFLATE_BLOCK = 256 << 10
# igzip level 1 (bench/appliance_archive.py, a real 426 MiB guest disk): 0.07x
# the time of `tar czf` but 11.5% larger. Level 3 with two threads is 8.6%
# larger at 0.10x, and makes verifying 15% slower: level 1 it is.
COMPRESS_LEVEL = 1
COMPRESS_THREADS = 1  # a thread of its own; a second one gains nothing on 2 cores
MANIFEST_MAX_BYTES = 1 << 20
SMALL_MEMBER_MAX_BYTES = 1 << 20

QCOW2_MAGIC = b"QFI\xfb"
QCOW2_INCOMPAT_DATA_FILE = 1 << 2
QCOW2_EXT_DATA_FILE = 0x44415441
QCOW2_EXT_END = 0


class ArchiveInvalid(ValueError):
    """The archive is not one this format accepts; the message says why."""


@dataclass(frozen=True)
class Limits:
    """Caps on what a verifier decompresses and writes: the disk's size, any
    other member's, and the whole tar stream's."""

    disk_bytes: int
    total_bytes: int
    small_member_bytes: int = SMALL_MEMBER_MAX_BYTES

    def member_cap(self, name: str) -> int:
        if name == DISK:
            return self.disk_bytes
        if name == MANIFEST:
            return MANIFEST_MAX_BYTES
        return self.small_member_bytes


@dataclass(frozen=True)
class FileDigest:
    size: int
    sha256: str

    def as_json(self) -> dict:
        return {"size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Written:
    """What the writer made: the archive's own size and SHA-256 (the download's
    ETag), and the manifest it ends with."""

    size: int
    sha256: str
    manifest: dict


@dataclass
class Verified:
    manifest: dict
    files: dict[str, FileDigest] = field(default_factory=dict)
    # The archive's own SHA-256, over the compressed bytes read.
    sha256: str = ""
    size: int = 0


# --- Writing --------------------------------------------------------------------------------


def manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=True) + "\n").encode()


def state_time(value: datetime) -> int:
    """Whole seconds since the epoch: what tar headers and the manifest carry."""
    return int(value.astimezone(timezone.utc).timestamp())


def iso_time(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write(
    output: BinaryIO,
    *,
    disk: Path,
    texts: dict[str, str],
    manifest: dict,
    mtime: int,
    on_progress: Callable[[int, int], None] | None = None,
) -> Written:
    """Write the archive to `output`: the disk file, the small text members
    (`texts`, by member name), then the manifest, which is `manifest` with its
    `files` filled in from the bytes as they were written.

    `on_progress(done, total)` is called as the members' bytes go in."""
    missing = set(MEMBERS) - {DISK} - set(texts)
    extra = set(texts) - set(MEMBERS)
    if missing or extra:
        raise ValueError(f"members: missing {sorted(missing)}, unexpected {sorted(extra)}")
    sizes = {DISK: disk.stat().st_size, **{name: len(text.encode()) for name, text in texts.items()}}
    total = sum(sizes.values())
    done = [0]

    def advance(count: int) -> None:
        done[0] += count
        if on_progress:
            on_progress(done[0], total)

    hashed_output = _HashingWriter(output)
    # igzip's threaded writer deflates in a thread of its own (1 MiB blocks,
    # each primed with the previous 32 KiB), so reading and hashing overlap
    # with compressing; its header has no file name and a zero mtime, so
    # nothing of the machine or the clock leaks into the bytes.
    with igzip_threaded.open(hashed_output, "wb", compresslevel=COMPRESS_LEVEL, threads=COMPRESS_THREADS,
                             block_size=COPY_CHUNK) as gz:
        tar = _TarWriter(gz)
        files: dict[str, FileDigest] = {}
        for name in MEMBERS:
            if name == DISK:
                with open(disk, "rb") as source:
                    files[name] = tar.add(name, source, sizes[name], mtime, advance)
            else:
                files[name] = tar.add(name, io.BytesIO(texts[name].encode()), sizes[name], mtime, advance)
        final = {**manifest, "files": {name: files[name].as_json() for name in MEMBERS}}
        body = manifest_bytes(final)
        tar.add(MANIFEST, io.BytesIO(body), len(body), mtime, lambda count: None)
        tar.close()
    return Written(size=hashed_output.size, sha256=hashed_output.sha256.hexdigest(), manifest=final)


def _member(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = MODES.get(name, DEFAULT_MODE)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


class _TarWriter:
    """The tar stream tarfile would write in "w|" mode (pax headers, 512-byte
    blocks, two zero blocks, padded to a whole record), written straight into
    the compressor in 1 MiB pieces: tarfile's own stream hands it 10 KiB
    records and copies its buffer after each, which cost as much as deflating."""

    def __init__(self, target: BinaryIO):
        self._target = target
        self._offset = 0

    def _put(self, data: bytes) -> None:
        self._target.write(data)
        self._offset += len(data)

    def add(self, name: str, source: BinaryIO, size: int, mtime: int,
            advance: Callable[[int], None]) -> FileDigest:
        self._put(_member(name, size, mtime).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        sha256 = hashlib.sha256()
        copied = 0
        while copied < size:
            chunk = source.read(min(COPY_CHUNK, size - copied))
            if not chunk:
                break
            sha256.update(chunk)
            self._put(chunk)
            copied += len(chunk)
            advance(len(chunk))
        if copied != size or source.read(1):
            raise OSError(f"{name} changed while it was archived ({size} bytes expected)")
        self._pad(tarfile.BLOCKSIZE)
        return FileDigest(size=size, sha256=sha256.hexdigest())

    def _pad(self, unit: int) -> None:
        remainder = self._offset % unit
        if remainder:
            self._put(b"\0" * (unit - remainder))

    def close(self) -> None:
        self._put(b"\0" * (2 * tarfile.BLOCKSIZE))
        self._pad(tarfile.RECORDSIZE)


class _HashingWriter(io.RawIOBase):
    def __init__(self, target: BinaryIO):
        self._target = target
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._target.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self._target.flush()


# --- Verifying ------------------------------------------------------------------------------


def verify(
    source: BinaryIO,
    *,
    limits: Limits,
    extract_to: Path | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Verified:
    """Check an archive as it streams: member names, types, order and sizes,
    the disk's qcow2 header, every hash against the manifest, and the
    manifest's schema. With `extract_to` (an empty directory), the members
    are written there (0600) as they are checked; on any error the caller
    removes that directory, since nothing in it is trustworthy.

    Raises ArchiveInvalid with a message for the person who gave the archive."""
    hashed = _CountingReader(source, cap=None)
    # Inflating is the slowest part of verifying: igzip's threaded reader
    # inflates in a thread of its own (small blocks: memory stays a few MiB)
    # while this one parses and hashes.
    inflated = igzip_threaded.open(hashed, "rb", block_size=INFLATE_BLOCK)
    try:
        decompressed = _CountingReader(inflated, cap=limits.total_bytes, on_progress=on_progress)
        verified = _verify_tar(decompressed, limits, extract_to)
        # Whatever follows the tar's end blocks inside the gzip stream is
        # not part of the format either.
        if decompressed.read(1):
            raise ArchiveInvalid("The archive has data after its end.")
    except ArchiveInvalid:
        raise
    except EOFError:
        raise ArchiveInvalid("The archive is truncated: its gzip stream ends early.") from None
    except tarfile.ReadError as exc:
        raise ArchiveInvalid(f"The archive is not a readable tar.gz ({exc}).") from None
    except (OSError, igzip.BadGzipFile, ValueError, IsalError) as exc:  # IsalError: corrupt deflate data
        raise ArchiveInvalid(f"The archive is not a readable tar.gz ({exc}).") from None
    finally:
        inflated.close()  # stops the inflating thread, also on errors
    verified.sha256 = hashed.sha256.hexdigest()
    verified.size = hashed.count
    return verified


def verify_file(path: Path, *, limits: Limits, extract_to: Path | None = None,
                on_progress: Callable[[int], None] | None = None) -> Verified:
    with open(path, "rb") as source:
        return verify(source, limits=limits, extract_to=extract_to, on_progress=on_progress)


def _verify_tar(stream: BinaryIO, limits: Limits, extract_to: Path | None) -> Verified:
    seen: dict[str, FileDigest] = {}
    manifest: dict | None = None
    try:
        tar = tarfile.open(fileobj=stream, mode="r|", encoding="utf-8", errors="strict", tarinfo=_BoundedTarInfo)
    except tarfile.ReadError as exc:
        raise ArchiveInvalid(f"The archive is not a readable tar.gz ({exc}).") from None
    hashes = _BackgroundHashes()
    with tar, contextlib.closing(hashes):
        for member in tar:
            name = member.name
            if manifest is not None:
                raise ArchiveInvalid(f"{_show(name)} comes after manifest.json, which must be the last member.")
            _check_member(member, seen, limits)
            target = None
            if extract_to is not None and name != MANIFEST:
                target = extract_to / name
                target.parent.mkdir(mode=0o700, exist_ok=True)
            data = tar.extractfile(member)
            digest, head = _copy_member(data, member.size, target, hashes)
            if name == DISK:
                check_qcow2_header(head)
            if name == MANIFEST:
                manifest = _parse_manifest(head)
            else:
                seen[name] = digest
    if manifest is None:
        raise ArchiveInvalid("The archive has no manifest.json." if not seen
                             else "manifest.json is missing: it must be the archive's last member.")
    _check_against_manifest(manifest, seen)
    return Verified(manifest=manifest, files=seen)


# Our members' names are short; a pax or GNU long-name header is tiny.
METADATA_HEADER_MAX_BYTES = 64 * 1024
_METADATA_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                   tarfile.GNUTYPE_LONGLINK)


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile reads a pax or GNU long-name header whole into memory, however
    large it says it is; refuse a large one before it does."""

    def _proc_member(self, tar):
        if self.type in _METADATA_TYPES and self.size > METADATA_HEADER_MAX_BYTES:
            raise ArchiveInvalid(f"The archive has a {self.size} byte metadata header; "
                                 f"at most {METADATA_HEADER_MAX_BYTES} bytes are allowed.")
        return super()._proc_member(tar)


def _show(name: str) -> str:
    return json.dumps(name)


def _check_member(member: tarfile.TarInfo, seen: dict[str, FileDigest], limits: Limits) -> None:
    name = member.name
    shown = _show(name)
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise ArchiveInvalid(f"{shown} is an absolute path; archive members are relative.")
    if ".." in name.split("/") or "\\" in name:
        raise ArchiveInvalid(f"{shown} points outside the archive (..).")
    if member.issym() or member.islnk():
        kind = "symbolic link" if member.issym() else "hard link"
        raise ArchiveInvalid(f"{shown} is a {kind}; an archive holds regular files only.")
    if member.isdev():
        raise ArchiveInvalid(f"{shown} is a device file; an archive holds regular files only.")
    if member.isdir():
        raise ArchiveInvalid(f"{shown} is a directory entry; an archive holds regular files only.")
    if member.sparse is not None:
        raise ArchiveInvalid(f"{shown} is a sparse file; an archive holds regular files only.")
    if not member.isreg():
        raise ArchiveInvalid(f"{shown} is not a regular file.")
    if name not in (*MEMBERS, MANIFEST):
        raise ArchiveInvalid(f"{shown} is not part of an appliance archive.")
    if name in seen:
        raise ArchiveInvalid(f"{shown} appears twice.")
    cap = limits.member_cap(name)
    if member.size > cap:
        raise ArchiveInvalid(f"{shown} is {member.size} bytes, more than the {cap} bytes allowed.")


def _copy_member(data: BinaryIO, size: int, target: Path | None,
                 hashes: _BackgroundHashes) -> tuple[FileDigest, bytes]:
    """Hash (and write) a member; returns its digest and its first bytes
    (the qcow2 header, or the manifest whole, which is capped small)."""
    sha256 = hashlib.sha256()
    head = bytearray()
    count = 0
    output = None
    if target is not None:
        output = open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
    try:
        while True:
            chunk = data.read(COPY_CHUNK)
            if not chunk:
                break
            hashes.update(sha256, chunk)
            if len(head) < MANIFEST_MAX_BYTES:
                head += chunk[: MANIFEST_MAX_BYTES - len(head)]
            if output is not None:
                output.write(chunk)
            count += len(chunk)
    finally:
        if output is not None:
            output.close()
    if count != size:  # tarfile stops at the header's size; fewer bytes means the stream ended
        raise EOFError()
    hashes.settle()
    return FileDigest(size=count, sha256=sha256.hexdigest()), bytes(head)


class _BackgroundHashes:
    """SHA-256 updates in a thread of their own: hashlib lets go of the GIL
    while it hashes, so hashing overlaps with inflating and parsing. A short
    queue keeps memory to a few chunks."""

    def __init__(self, depth: int = 3):
        self._queue: queue.Queue = queue.Queue(depth)
        self._thread = threading.Thread(target=self._run, name="archive-hashes", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            digest, data = item
            digest.update(data)
            self._queue.task_done()
        self._queue.task_done()

    def update(self, digest, data: bytes) -> None:
        self._queue.put((digest, data))

    def settle(self) -> None:
        """Wait until every update so far is done."""
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()


def check_qcow2_header(head: bytes) -> None:
    """Refuse a disk that is not qcow2, or whose header makes QEMU open
    another file: a backing file, or an external data file (the incompatible
    feature bit, or the header extension that names it)."""
    if len(head) < 72 or head[:4] != QCOW2_MAGIC:
        raise ArchiveInvalid("disk.qcow2 is not a qcow2 image.")
    version, backing_offset, backing_size = struct.unpack(">IQI", head[4:20])
    if version not in (2, 3):
        raise ArchiveInvalid(f"disk.qcow2 is qcow2 version {version}; versions 2 and 3 are accepted.")
    if backing_offset or backing_size:
        raise ArchiveInvalid("disk.qcow2 names a backing file; an archived disk must stand alone.")
    if version == 2:
        return
    if len(head) < 104:
        raise ArchiveInvalid("disk.qcow2 has a truncated header.")
    (incompatible,) = struct.unpack(">Q", head[72:80])
    if incompatible & QCOW2_INCOMPAT_DATA_FILE:
        raise ArchiveInvalid("disk.qcow2 keeps its data in an external file; an archived disk must stand alone.")
    (header_length,) = struct.unpack(">I", head[100:104])
    offset = header_length
    while offset + 8 <= len(head):
        kind, length = struct.unpack(">II", head[offset:offset + 8])
        if kind == QCOW2_EXT_END:
            return
        if kind == QCOW2_EXT_DATA_FILE:
            raise ArchiveInvalid("disk.qcow2 names an external data file; an archived disk must stand alone.")
        offset += 8 + (length + 7) // 8 * 8


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _parse_manifest(body: bytes) -> dict:
    try:
        manifest = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArchiveInvalid(f"manifest.json is not valid JSON ({exc}).") from None
    problems = manifest_problems(manifest)
    if problems:
        raise ArchiveInvalid("manifest.json: " + "; ".join(problems))
    return manifest


def manifest_problems(manifest) -> list[str]:
    """The manifest's schema, checked by hand: a short list of what is wrong."""
    if not isinstance(manifest, dict):
        return ["it must be a JSON object"]
    problems = []
    if manifest.get("format") != FORMAT:
        problems.append(f"format must be {FORMAT!r}, not {manifest.get('format')!r}")
    for key in ("infrasim_version", "created_at"):
        if not isinstance(manifest.get(key), str):
            problems.append(f"{key} must be a string")
    if not isinstance(manifest.get("secrets_included"), bool):
        problems.append("secrets_included must be true or false")
    appliance = manifest.get("appliance")
    if not isinstance(appliance, dict):
        problems.append("appliance must be an object")
    else:
        for key in ("name", "template", "image_digest", "os"):
            if not isinstance(appliance.get(key), str) or not appliance.get(key):
                problems.append(f"appliance.{key} must be a non-empty string")
        for key in ("vcpus", "memory_mib", "disk_gib"):
            value = appliance.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"appliance.{key} must be a positive integer")
    files = manifest.get("files")
    if not isinstance(files, dict):
        problems.append("files must be an object")
    else:
        for name, entry in files.items():
            if (not isinstance(entry, dict) or set(entry) != {"size", "sha256"}
                    or not isinstance(entry["size"], int) or isinstance(entry["size"], bool) or entry["size"] < 0
                    or not isinstance(entry["sha256"], str) or not _HEX64.match(entry["sha256"])):
                problems.append(f"files[{_show(name)}] must be {{\"size\": N, \"sha256\": \"<64 hex>\"}}")
    return problems


def _check_against_manifest(manifest: dict, seen: dict[str, FileDigest]) -> None:
    listed = manifest["files"]
    for name in MEMBERS:
        if name not in listed and name not in seen:
            raise ArchiveInvalid(f"{_show(name)} is missing from the archive and from the manifest.")
        if name not in seen:
            raise ArchiveInvalid(f"{_show(name)} is listed in the manifest but missing from the archive.")
        if name not in listed:
            raise ArchiveInvalid(f"{_show(name)} is in the archive but not in the manifest.")
    for name in listed:
        if name not in MEMBERS:
            raise ArchiveInvalid(f"The manifest lists {_show(name)}, which is not part of an appliance archive.")
    for name in MEMBERS:
        want, got = listed[name], seen[name]
        if want["size"] != got.size:
            raise ArchiveInvalid(f"{_show(name)} is {got.size} bytes; the manifest says {want['size']}.")
        if want["sha256"] != got.sha256:
            raise ArchiveInvalid(f"{_show(name)} does not match its SHA-256 in the manifest "
                                 f"(manifest {want['sha256']}, archive {got.sha256}).")


class _CountingReader(io.RawIOBase):
    """Counts (and hashes, for the outer stream) what is read; with a cap,
    refuses to deliver more than that many bytes: the decompression bomb
    stops here, whatever the tar headers claim."""

    def __init__(self, source: BinaryIO, *, cap: int | None, on_progress: Callable[[int], None] | None = None):
        self._source = source
        self._cap = cap
        self._on_progress = on_progress
        self.sha256 = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.count += len(data)
        if self._cap is not None and self.count > self._cap:
            raise ArchiveInvalid(f"The archive unpacks to more than the {self._cap} bytes allowed.")
        if self._cap is None:
            self.sha256.update(data)
        if self._on_progress and data:
            self._on_progress(self.count)
        return data


def sha256sum_lines(files: dict[str, dict]) -> str:
    """The manifest's hashes as `sha256sum -c` reads them."""
    return "".join(f"{entry['sha256']}  {name}\n" for name, entry in sorted(files.items()))

