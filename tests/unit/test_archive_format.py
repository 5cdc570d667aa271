"""The `infrasim-appliance/1` archive format (appliances/archive.py).

Two halves. What `archive.write` makes: the same bytes for the same inputs,
nothing of the machine or the clock in them, and a tar.gz that the system's
own `tar` and `sha256sum` read as the format says. And what `archive.verify`
refuses: a matrix of hostile archives, each built by hand (stdlib tarfile and
gzip, or GNU tar) so that it differs from a valid archive in one way only,
each refused with ArchiveInvalid and a message that names the problem,
because that message is what the person who uploaded the archive reads.

`test_the_hand_packed_copy_of_a_valid_archive_verifies` is the control: the
packer the hostile cases use makes an archive that verifies, so each refusal
below is down to the one thing that case changes.

No database and no Django: `appliances.archive` is a pure module.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import struct
import subprocess
import tarfile
import time
import tracemalloc
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from appliances import archive

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
MTIME = 1_700_000_000
LIMITS = archive.Limits(disk_bytes=64 * MiB, total_bytes=128 * MiB)
TEXTS = {
    archive.USER_DATA: "#cloud-config\nusers:\n  - name: ops\n    ssh_authorized_keys: [ssh-ed25519 AAAA ops]\n",
    archive.META_DATA: "instance-id: iid-web\nlocal-hostname: web\n",
    # A placeholder, not a key: only the bytes and the member's mode matter here.
    archive.WG0_CONF: "[Interface]\nPrivateKey = " + "A" * 43 + "=\nAddress = 10.99.0.2/32\n",
    archive.MAIN_TF: 'resource "libvirt_domain" "web" {\n  name   = "web"\n  vcpu   = 1\n  memory = 512\n}\n',
}
MANIFEST = {
    "format": archive.FORMAT,
    "infrasim_version": "0.9.0",
    "created_at": "2026-11-25T00:00:00Z",
    "secrets_included": False,
    "appliance": {"name": "web", "template": "debian-bookworm-local", "image_digest": "sha256:ab", "os": "Debian 12",
                  "vcpus": 1, "memory_mib": 512, "disk_gib": 1},
}
ORDER = [*archive.MEMBERS, archive.MANIFEST]


# --- Building archives ----------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """One tar entry as the hostile cases describe it; `data` only for regular files."""

    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    mode: int = 0o644
    linkname: str = ""


@dataclass(frozen=True)
class Valid:
    """A valid archive as `archive.write` made it, and the members it holds."""

    path: Path
    disk: Path
    written: archive.Written
    members: list[Member]

    @property
    def raw(self) -> bytes:
        return self.path.read_bytes()

    def member(self, name: str) -> Member:
        [found] = [m for m in self.members if m.name == name]
        return found

    def replaced(self, name: str, new: Member | None) -> list[Member]:
        """The members with `name` swapped for `new` (or dropped)."""
        return [(new if m.name == name else m) for m in self.members if not (m.name == name and new is None)]

    def inserted_before(self, name: str, new: Member) -> list[Member]:
        index = [m.name for m in self.members].index(name)
        return [*self.members[:index], new, *self.members[index:]]

    def with_manifest(self, change: Callable[[dict], None]) -> list[Member]:
        manifest = json.loads(json.dumps(self.written.manifest))
        change(manifest)
        return self.replaced(archive.MANIFEST, Member(archive.MANIFEST, archive.manifest_bytes(manifest)))


def qemu_img(*args: str, cwd: Path) -> None:
    subprocess.run(["qemu-img", *args], cwd=cwd, check=True, capture_output=True)


def write_archive(path: Path, disk: Path, *, mtime: int = MTIME) -> archive.Written:
    with open(path, "wb") as output:
        return archive.write(output, disk=disk, texts=TEXTS, manifest=MANIFEST, mtime=mtime)


@pytest.fixture
def valid(tmp_path: Path) -> Valid:
    disk = tmp_path / "source" / "disk.qcow2"
    disk.parent.mkdir()
    qemu_img("create", "-q", "-f", "qcow2", disk.name, "64M", cwd=disk.parent)
    path = tmp_path / "valid.tar.gz"
    written = write_archive(path, disk)
    members = [Member(archive.DISK, disk.read_bytes())]
    members += [Member(name, TEXTS[name].encode(), mode=archive.MODES.get(name, 0o644)) for name in archive.MEMBERS[1:]]
    members.append(Member(archive.MANIFEST, archive.manifest_bytes(written.manifest)))
    return Valid(path=path, disk=disk, written=written, members=members)


def tar_bytes(members: list[Member]) -> bytes:
    """An uncompressed pax tar of `members`, by the stdlib rather than the module under test."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = member.type
            info.mode = member.mode
            info.mtime = MTIME
            info.linkname = member.linkname
            if member.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
                info.devmajor, info.devminor = 1, 3
            if member.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
                info.size = len(member.data)
                tar.addfile(info, io.BytesIO(member.data))
            else:
                tar.addfile(info)
    return buffer.getvalue()


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def pack(path: Path, members: list[Member]) -> Path:
    path.write_bytes(gzipped(tar_bytes(members)))
    return path


def refusal(source: Path | bytes, *, limits: archive.Limits = LIMITS, extract_to: Path | None = None) -> str:
    """The message `verify` refuses `source` with (it must refuse it)."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    with stream, pytest.raises(archive.ArchiveInvalid) as refused:
        archive.verify(stream, limits=limits, extract_to=extract_to)
    return str(refused.value)


def flipped(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    changed = bytearray(data)
    changed[offset] ^= mask
    return bytes(changed)


def bytes_under(directory: Path) -> int:
    """What a directory holds, counting both apparent sizes and allocated blocks,
    so neither a big sparse file nor a big dense one goes unnoticed."""
    files = [p for p in directory.rglob("*") if p.is_file()]
    return max(sum(p.stat().st_size for p in files), sum(p.stat().st_blocks * 512 for p in files))


# --- Writing: reproducible, and readable by the system's own tools -----------------------------


def test_the_same_inputs_give_the_same_bytes_and_another_mtime_other_bytes(valid: Valid, tmp_path: Path):
    again = tmp_path / "again.tar.gz"
    # The disk file's own timestamps are not the archive's business: only `mtime` is.
    os.utime(valid.disk, (MTIME + 12345, MTIME + 12345))
    assert write_archive(again, valid.disk) == valid.written
    assert again.read_bytes() == valid.raw

    later = tmp_path / "later.tar.gz"
    write_archive(later, valid.disk, mtime=MTIME + 1)
    assert later.read_bytes() != valid.raw
    assert archive.verify_file(later, limits=LIMITS).files == archive.verify_file(valid.path, limits=LIMITS).files


def test_the_gzip_header_has_no_file_name_and_no_time(valid: Valid):
    raw = valid.raw
    assert raw[:3] == b"\x1f\x8b\x08"
    fname = 0x08
    assert raw[3] & fname == 0
    assert raw[4:8] == b"\0\0\0\0"
    # Nor anywhere inside: no path of the machine that wrote it.
    assert str(valid.disk.parent).encode() not in gzip.decompress(raw)


def test_written_reports_the_files_size_and_sha256(valid: Valid):
    raw = valid.raw
    assert valid.written.size == len(raw)
    assert valid.written.sha256 == hashlib.sha256(raw).hexdigest()
    assert valid.written.manifest == {**MANIFEST, "files": {
        m.name: {"size": len(m.data), "sha256": hashlib.sha256(m.data).hexdigest()} for m in valid.members[:-1]}}


def test_system_tar_lists_the_members_in_order_owned_by_root_with_private_modes_for_secrets(valid: Valid):
    listing = subprocess.run(["tar", "tzf", str(valid.path)], check=True, capture_output=True, text=True).stdout
    assert listing.splitlines() == ORDER

    verbose = subprocess.run(["tar", "--numeric-owner", "-tvzf", str(valid.path)],
                             check=True, capture_output=True, text=True).stdout
    seen = {}
    for line in verbose.splitlines():
        permissions, owner, *_, name = line.split()
        seen[name] = (permissions, owner)
    assert seen == {
        archive.DISK: ("-rw-r--r--", "0/0"),
        archive.USER_DATA: ("-rw-------", "0/0"),
        archive.META_DATA: ("-rw-r--r--", "0/0"),
        archive.WG0_CONF: ("-rw-------", "0/0"),
        archive.MAIN_TF: ("-rw-r--r--", "0/0"),
        archive.MANIFEST: ("-rw-r--r--", "0/0"),
    }
    with tarfile.open(valid.path, "r:gz") as tar:
        headers = {(info.uname, info.gname, info.mtime, info.type) for info in tar.getmembers()}
    assert headers == {("", "", MTIME, tarfile.REGTYPE)}


def test_system_tar_extracts_it_and_sha256sum_accepts_the_manifests_hashes(valid: Valid, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "xzf", str(valid.path), "-C", str(out)], check=True, capture_output=True)
    for member in valid.members:
        assert (out / member.name).read_bytes() == member.data

    sums = out / "SHA256SUMS"
    sums.write_text(archive.sha256sum_lines(valid.written.manifest["files"]))
    checked = subprocess.run(["sha256sum", "--strict", "-c", sums.name], cwd=out, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert sorted(checked.stdout.splitlines()) == sorted(f"{name}: OK" for name in archive.MEMBERS)

    # The same check fails once a member's bytes change: it really compares.
    (out / archive.MAIN_TF).write_text(TEXTS[archive.MAIN_TF] + "# edited\n")
    assert subprocess.run(["sha256sum", "-c", sums.name], cwd=out, capture_output=True).returncode != 0


def test_verify_extracts_each_member_privately_and_returns_the_manifest_and_the_files_hash(valid: Valid,
                                                                                         tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    progress: list[int] = []
    verified = archive.verify_file(valid.path, limits=LIMITS, extract_to=out, on_progress=progress.append)

    raw = valid.raw
    assert verified.sha256 == hashlib.sha256(raw).hexdigest() == valid.written.sha256
    assert verified.size == len(raw)
    assert verified.manifest == valid.written.manifest
    assert {name: digest.as_json() for name, digest in verified.files.items()} == valid.written.manifest["files"]
    # Every member but the manifest (which the caller has as `verified.manifest`).
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == sorted(archive.MEMBERS)
    for member in valid.members[:-1]:
        extracted = out / member.name
        assert extracted.read_bytes() == member.data
        assert stat.S_IMODE(extracted.stat().st_mode) == 0o600, member.name
    for directory in (p for p in out.rglob("*") if p.is_dir()):
        assert stat.S_IMODE(directory.stat().st_mode) & 0o077 == 0, directory
    assert progress and progress == sorted(progress) and progress[-1] >= sum(len(m.data) for m in valid.members)


def test_the_hand_packed_copy_of_a_valid_archive_verifies(valid: Valid, tmp_path: Path):
    """The control for every refusal below: the stdlib-built copy is accepted."""
    verified = archive.verify_file(pack(tmp_path / "copy.tar.gz", valid.members), limits=LIMITS)
    assert verified.manifest == valid.written.manifest


# --- Refused: changed bytes ---------------------------------------------------------------------


@pytest.mark.parametrize("name", archive.MEMBERS)
def test_a_flipped_byte_in_a_member_is_a_sha256_mismatch_naming_it(valid: Valid, tmp_path: Path, name: str):
    data = valid.member(name).data
    # The disk's qcow2 header (its first cluster) stays intact, so only the hash can tell.
    offset = len(data) - 1 if name == archive.DISK else len(data) // 2
    assert name != archive.DISK or offset >= 64 * KiB
    members = valid.replaced(name, replace(valid.member(name), data=flipped(data, offset)))
    message = refusal(pack(tmp_path / "flipped.tar.gz", members))
    assert f'"{name}" does not match its SHA-256 in the manifest' in message


def _drop(key: str) -> Callable[[dict], None]:
    return lambda manifest: manifest.pop(key)


def _set(key: str, value) -> Callable[[dict], None]:
    return lambda manifest: manifest.__setitem__(key, value)


def _grow_meta_data(manifest: dict) -> None:
    manifest["files"][archive.META_DATA]["size"] += 1


def _list_an_extra_file(manifest: dict) -> None:
    manifest["files"]["notes.txt"] = {"size": 0, "sha256": hashlib.sha256(b"").hexdigest()}


def _uppercase_a_hash(manifest: dict) -> None:
    entry = manifest["files"][archive.MAIN_TF]
    entry["sha256"] = entry["sha256"].upper()


@pytest.mark.parametrize("change, expected", [
    (_set("format", "infrasim-appliance/2"), "format must be 'infrasim-appliance/1', not 'infrasim-appliance/2'"),
    (_drop("files"), "files must be an object"),
    (_drop("appliance"), "appliance must be an object"),
    (_set("secrets_included", "no"), "secrets_included must be true or false"),
    (_grow_meta_data, f'"{archive.META_DATA}" is {len(TEXTS[archive.META_DATA])} bytes; '
                      f'the manifest says {len(TEXTS[archive.META_DATA]) + 1}'),
    (_list_an_extra_file, 'The manifest lists "notes.txt"'),
    (_uppercase_a_hash, f'files["{archive.MAIN_TF}"] must be'),
], ids=["wrong-format", "no-files", "no-appliance", "secrets-not-bool", "wrong-size", "extra-file", "uppercase-hash"])
def test_a_manifest_that_breaks_the_schema_is_refused_saying_what_is_wrong(valid: Valid, tmp_path: Path,
                                                                           change, expected: str):
    message = refusal(pack(tmp_path / "manifest.tar.gz", valid.with_manifest(change)))
    assert expected in message


def test_a_manifest_that_is_not_json_is_refused(valid: Valid, tmp_path: Path):
    body = valid.member(archive.MANIFEST).data
    assert body[0:1] == b"{"
    members = valid.replaced(archive.MANIFEST, Member(archive.MANIFEST, flipped(body, 0)))
    assert "manifest.json is not valid JSON" in refusal(pack(tmp_path / "json.tar.gz", members))


@pytest.mark.parametrize("cut", ["header", "half", "minus-10", "minus-1"])
def test_a_truncated_file_is_refused_as_truncated(valid: Valid, cut: str):
    raw = valid.raw
    length = {"header": 6, "half": len(raw) // 2, "minus-10": len(raw) - 10, "minus-1": len(raw) - 1}[cut]
    assert "truncated" in refusal(raw[:length])


@pytest.mark.parametrize("offset, expected", [(-8, "CRC check failed"), (-1, "Incorrect length")],
                         ids=["crc32", "isize"])
def test_a_flipped_byte_in_the_gzip_trailer_is_refused(valid: Valid, offset: int, expected: str):
    assert expected in refusal(flipped(valid.raw, len(valid.raw) + offset))


def test_a_deflate_block_of_the_reserved_type_is_refused_as_unreadable(valid: Valid):
    """Byte 10 starts the deflate stream; bits 1-2 of it are the first block's
    type, and type 3 is reserved (RFC 1951 3.2.3), so no inflater can read on."""
    corrupt = bytearray(valid.raw)
    corrupt[10] |= 0b110
    assert "not a readable tar.gz" in refusal(bytes(corrupt))


def test_any_flipped_byte_in_the_compressed_stream_that_changes_its_content_is_refused(valid: Valid):
    """Deflate has redundancy: some flips inflate to the very same tar bytes,
    and accepting those is right. Every other flip must be an ArchiveInvalid,
    never some other exception escaping to the caller."""
    raw = valid.raw
    tar = gzip.decompress(raw)
    changed, escaped = 0, []
    for offset in range(10, len(raw) - 8, 3):
        corrupt = flipped(raw, offset)
        try:
            same = gzip.decompress(corrupt) == tar
        except (OSError, EOFError, zlib.error):
            same = False
        if same:
            continue
        changed += 1
        try:
            archive.verify(io.BytesIO(corrupt), limits=LIMITS)
        except archive.ArchiveInvalid:
            continue
        except Exception as exc:  # noqa: BLE001 - collected to show which offsets escape, and how
            escaped.append((offset, f"{type(exc).__module__}.{type(exc).__name__}: {exc}"))
            continue
        escaped.append((offset, "accepted"))
    assert changed > (len(raw) - 18) // 3 // 2
    assert escaped == [], f"{len(escaped)} of {changed} corruptions not refused with ArchiveInvalid, e.g. {escaped[:3]}"


# --- Refused: names, types and structure ------------------------------------------------------


@pytest.mark.parametrize("name, expected", [
    ("../evil", "points outside the archive"),
    ("cloud-init/../../x", "points outside the archive"),
    ("..\\evil", "points outside the archive"),
    ("/etc/passwd", "is an absolute path"),
    ("{tmp}/escaped", "is an absolute path"),
    ("C:/evil", "is an absolute path"),
])
def test_a_member_outside_the_archive_is_refused_and_nothing_is_written_there(valid: Valid, tmp_path: Path,
                                                                               name: str, expected: str):
    # An absolute path into this test's own directory, where a slip would show.
    name = name.replace("{tmp}", str(tmp_path))
    hostile = pack(tmp_path / "path.tar.gz", valid.inserted_before(archive.USER_DATA, Member(name, b"owned\n")))
    out = tmp_path / "a" / "b" / "out"
    out.mkdir(parents=True)
    message = refusal(hostile, extract_to=out)
    assert f"{json.dumps(name)} {expected}" in message
    # Only the disk, which came before the hostile member, was written; nothing beside or above.
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert written == ["a", "a/b", "a/b/out", "a/b/out/disk.qcow2", "path.tar.gz", "source", "source/disk.qcow2",
                       "valid.tar.gz"]


@pytest.mark.parametrize("name, member, expected", [
    (archive.USER_DATA, Member(archive.USER_DATA, type=tarfile.SYMTYPE, linkname="/etc/shadow"), "is a symbolic link"),
    (archive.WG0_CONF, Member(archive.WG0_CONF, type=tarfile.LNKTYPE, linkname=archive.DISK), "is a hard link"),
    (archive.META_DATA, Member(archive.META_DATA, type=tarfile.CHRTYPE), "is a device file"),
    (archive.META_DATA, Member(archive.META_DATA, type=tarfile.BLKTYPE), "is a device file"),
    (archive.META_DATA, Member(archive.META_DATA, type=tarfile.FIFOTYPE), "is a device file"),
], ids=["symlink", "hardlink", "char-device", "block-device", "fifo"])
def test_a_member_that_is_not_a_regular_file_is_refused(valid: Valid, tmp_path: Path, name: str, member: Member,
                                                        expected: str):
    out = tmp_path / "out"
    out.mkdir()
    message = refusal(pack(tmp_path / "type.tar.gz", valid.replaced(name, member)), extract_to=out)
    assert f'"{name}" {expected}; an archive holds regular files only' in message
    assert not (out / name).exists() and not (out / name).is_symlink()


def test_a_directory_entry_is_refused(valid: Valid, tmp_path: Path):
    directory = Member("cloud-init/", type=tarfile.DIRTYPE, mode=0o755)
    message = refusal(pack(tmp_path / "dir.tar.gz", valid.inserted_before(archive.USER_DATA, directory)))
    assert '"cloud-init" is a directory entry' in message


STRUCTURE_REFUSALS = {
    "duplicate": f'"{archive.USER_DATA}" appears twice',
    "missing-everywhere": f'"{archive.WG0_CONF}" is missing from the archive and from the manifest',
    "missing-member": f'"{archive.WG0_CONF}" is listed in the manifest but missing from the archive',
    "unlisted-member": f'"{archive.WG0_CONF}" is in the archive but not in the manifest',
    "unexpected": '"notes.txt" is not part of an appliance archive',
    "after-manifest": f'"{archive.MAIN_TF}" comes after manifest.json, which must be the last member',
    "no-manifest": "manifest.json is missing: it must be the archive's last member",
    "empty": "The archive has no manifest.json",
}


@pytest.mark.parametrize("case", STRUCTURE_REFUSALS)
def test_a_member_twice_missing_unexpected_or_out_of_order_is_refused(valid: Valid, tmp_path: Path, case: str):
    def unlist_wg0(manifest: dict) -> None:
        del manifest["files"][archive.WG0_CONF]

    members = {
        "duplicate": lambda: valid.inserted_before(archive.META_DATA, valid.member(archive.USER_DATA)),
        "missing-everywhere": lambda: [m for m in valid.with_manifest(unlist_wg0) if m.name != archive.WG0_CONF],
        "missing-member": lambda: valid.replaced(archive.WG0_CONF, None),
        "unlisted-member": lambda: valid.with_manifest(unlist_wg0),
        "unexpected": lambda: valid.inserted_before(archive.MANIFEST, Member("notes.txt", b"hello\n")),
        "after-manifest": lambda: [*valid.replaced(archive.MAIN_TF, None), valid.member(archive.MAIN_TF)],
        "no-manifest": lambda: valid.replaced(archive.MANIFEST, None),
        "empty": lambda: [],
    }[case]()
    assert STRUCTURE_REFUSALS[case] in refusal(pack(tmp_path / f"{case}.tar.gz", members))


def test_data_after_the_tar_end_inside_the_gzip_stream_is_refused(valid: Valid):
    tar = gzip.decompress(valid.raw)
    assert len(tar) % tarfile.RECORDSIZE == 0
    # A whole record past the end: what a careless (or crafty) concatenation adds.
    assert "has data after its end" in refusal(gzipped(tar + b"junk".ljust(tarfile.RECORDSIZE, b"\0")))


def test_a_plain_tar_without_gzip_is_refused(valid: Valid):
    assert "not a readable tar.gz" in refusal(tar_bytes(valid.members))


# --- Refused: disks that are not a standalone qcow2 ------------------------------------------


def _backing_file(directory: Path) -> Path:
    qemu_img("create", "-q", "-f", "qcow2", "base.qcow2", "64M", cwd=directory)
    qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", "base.qcow2", "overlay.qcow2", cwd=directory)
    return directory / "overlay.qcow2"


def _data_file(directory: Path) -> Path:
    qemu_img("create", "-q", "-f", "qcow2", "-o", "data_file=data.raw,data_file_raw=on", "x.qcow2", "64M",
             cwd=directory)
    return directory / "x.qcow2"


def _data_file_extension_only(directory: Path) -> Path:
    """The data-file header extension without the incompatible-feature bit:
    the verifier must read the extensions too, not only the bit."""
    disk = _data_file(directory)
    header = bytearray(disk.read_bytes())
    (features,) = struct.unpack(">Q", header[72:80])
    assert features & archive.QCOW2_INCOMPAT_DATA_FILE
    header[72:80] = struct.pack(">Q", features & ~archive.QCOW2_INCOMPAT_DATA_FILE)
    disk.write_bytes(bytes(header))
    return disk


def _raw(directory: Path) -> Path:
    disk = directory / "raw.img"
    disk.write_bytes(b"\xeb\x63\x90" + bytes(MiB - 3))
    return disk


@pytest.mark.parametrize("make_disk, expected", [
    (_backing_file, "disk.qcow2 names a backing file"),
    (_data_file, "disk.qcow2 keeps its data in an external file"),
    (_data_file_extension_only, "disk.qcow2 names an external data file"),
    (_raw, "disk.qcow2 is not a qcow2 image"),
], ids=["backing-file", "data-file-bit", "data-file-extension", "raw"])
def test_a_disk_that_is_not_a_standalone_qcow2_is_refused(tmp_path: Path, make_disk, expected: str):
    """Written by `archive.write` itself, so the manifest matches: only the header can tell."""
    disk = make_disk(tmp_path)
    path = tmp_path / "disk.tar.gz"
    write_archive(path, disk)
    assert expected in refusal(path)


# --- Refused: archives that would cost more than the caps -------------------------------------


@pytest.mark.parametrize("tar_format", [
    ["--format=gnu"],
    ["--format=posix"],
    ["--format=posix", "--sparse-version=0.0"],
    ["--format=posix", "--sparse-version=0.1"],
    ["--format=posix", "--sparse-version=1.0"],
], ids=["gnu", "posix", "posix-0.0", "posix-0.1", "posix-1.0"])
def test_a_sparse_10_gib_disk_is_refused_at_once_without_writing_it(valid: Valid, tmp_path: Path, tar_format):
    source = tmp_path / "members"
    for member in valid.members:
        (source / member.name).parent.mkdir(parents=True, exist_ok=True)
        (source / member.name).write_bytes(member.data)
    # The real qcow2 at the start, then a hole up to 10 GiB: never 10 GiB on disk.
    subprocess.run(["truncate", "-s", "10G", archive.DISK], cwd=source, check=True)
    assert (source / archive.DISK).stat().st_blocks * 512 < 10 * MiB
    hostile = tmp_path / "sparse.tar.gz"
    subprocess.run(["tar", "--sparse", *tar_format, "-czf", str(hostile), *ORDER], cwd=source, check=True)
    assert hostile.stat().st_size < MiB

    # Under the server's own caps (64 GiB for a disk) it is the sparse check,
    # not a size cap, that stops it. No extraction here: should that check
    # ever go, this costs time (the holes read as zeros), never 10 GiB of disk.
    started = time.monotonic()
    message = refusal(hostile, limits=archive.Limits(disk_bytes=64 * GiB, total_bytes=64 * GiB + 64 * MiB))
    assert time.monotonic() - started < 2
    assert '"disk.qcow2" is a sparse file; an archive holds regular files only' in message

    # Extracting, under a disk cap that bounds what a regression could write.
    out = tmp_path / "out"
    out.mkdir()
    message = refusal(hostile, limits=archive.Limits(disk_bytes=GiB, total_bytes=GiB), extract_to=out)
    assert '"disk.qcow2" is a sparse file' in message
    assert bytes_under(out) < MiB


class _Zeros(io.RawIOBase):
    """`size` zero bytes, made as they are read."""

    def __init__(self, size: int):
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self._left)
        buffer[:count] = bytes(count)
        self._left -= count
        return count


def test_a_decompression_bomb_stops_at_the_total_cap_without_writing_more(valid: Valid, tmp_path: Path):
    bomb_size = 200 * MiB
    hostile = tmp_path / "bomb.tar.gz"
    with gzip.GzipFile(hostile, "wb", compresslevel=1, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for member in valid.members:
            info = tarfile.TarInfo(member.name)
            info.mode, info.mtime = member.mode, MTIME
            if member.name == archive.DISK:
                info.size = bomb_size
                tar.addfile(info, _Zeros(bomb_size))
            else:
                info.size = len(member.data)
                tar.addfile(info, io.BytesIO(member.data))
    assert hostile.stat().st_size < 2 * MiB

    cap = 64 * MiB
    out = tmp_path / "out"
    out.mkdir()
    started = time.monotonic()
    message = refusal(hostile, limits=archive.Limits(disk_bytes=GiB, total_bytes=cap), extract_to=out)
    assert time.monotonic() - started < 5
    assert f"The archive unpacks to more than the {cap} bytes allowed" in message
    assert bytes_under(out) <= cap
    shutil.rmtree(out)  # up to 64 MiB that pytest's kept tmp directories need not hold


@pytest.mark.parametrize("name, limits", [
    (archive.DISK, archive.Limits(disk_bytes=64 * KiB, total_bytes=128 * MiB)),
    (archive.USER_DATA, archive.Limits(disk_bytes=64 * MiB, total_bytes=128 * MiB, small_member_bytes=16)),
], ids=["disk", "small-member"])
def test_a_member_declared_larger_than_its_cap_is_refused_before_it_is_read(valid: Valid, tmp_path: Path,
                                                                           name: str, limits: archive.Limits):
    size = len(valid.member(name).data)
    cap = limits.member_cap(name)
    assert size > cap
    out = tmp_path / "out"
    out.mkdir()
    progress: list[int] = [0]
    with open(valid.path, "rb") as source, pytest.raises(archive.ArchiveInvalid) as refused:
        archive.verify(source, limits=limits, extract_to=out, on_progress=progress.append)
    assert f'"{name}" is {size} bytes, more than the {cap} bytes allowed' in str(refused.value)
    # The header alone decided: nothing of the member was written, and no more
    # was unpacked than the tar reader's one record of read-ahead past its header
    # (which, for the small members at the archive's end, is the whole rest).
    with tarfile.open(valid.path, "r:gz") as tar:
        data_offset = tar.getmember(name).offset_data
    assert progress[-1] <= data_offset + tarfile.RECORDSIZE
    assert not (out / name).exists()


@pytest.mark.parametrize("header_type", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME], ids=["pax", "gnu-longname"])
def test_a_huge_metadata_header_costs_no_memory(valid: Valid, header_type: bytes):
    """The module promises a hostile archive costs at most the caps in time
    and disk, "never in memory". A pax extended header or a GNU long-name
    entry is metadata that tar readers load whole; one of 32 MiB of zeros
    (32 KiB compressed) must not be held in memory, whether the verifier
    then refuses the archive (a long name of NULs) or not (a pax header of
    NULs reads as an empty one, and the members after it are valid)."""
    size = 32 * MiB
    info = tarfile.TarInfo("././@LongLink")
    info.type, info.size = header_type, size
    header = info.tobuf(format=tarfile.USTAR_FORMAT)
    hostile = gzipped(header + bytes(size) + tar_bytes(valid.members))
    assert len(hostile) < MiB
    limits = archive.Limits(disk_bytes=GiB, total_bytes=2 * GiB)

    tracemalloc.start()
    try:
        archive.verify_file(valid.path, limits=limits)
        _, valid_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with contextlib.suppress(archive.ArchiveInvalid):
            archive.verify(io.BytesIO(hostile), limits=limits)
        _, hostile_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert valid_peak < 8 * MiB
    assert hostile_peak < 8 * MiB, f"verifying used {hostile_peak / MiB:.0f} MiB for a {len(hostile)}-byte archive"
