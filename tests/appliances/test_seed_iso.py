"""NoCloud seed ISOs, checked with tools that are not ours: isoinfo
(genisoimage) and blkid read what a guest's kernel and cloud-init would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliances.cloudinit import read_seed_iso, write_seed_iso

REPOSITORY = Path(__file__).resolve().parents[2]
USER_DATA = "#cloud-config\nhostname: web-1\nwrite_files:\n- path: /etc/motd\n  content: |\n    Grüße ✓\n"
META_DATA = "instance-id: i-6f1c\nlocal-hostname: web-1\n"
NETWORK_CONFIG = "version: 2\nethernets:\n  ens2:\n    dhcp4: true\n"


def isoinfo(*arguments: str) -> bytes:
    return subprocess.run(["isoinfo", *arguments], check=True, capture_output=True).stdout


def blkid(path: Path, tag: str) -> str:
    return subprocess.run(
        ["blkid", "-p", "-o", "value", "-s", tag, str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture()
def seed(tmp_path) -> Path:
    path = tmp_path / "seed.iso"
    write_seed_iso(path, user_data=USER_DATA, meta_data=META_DATA, network_config=NETWORK_CONFIG)
    return path


def test_the_volume_is_labelled_cidata(seed):
    assert blkid(seed, "LABEL") == "cidata"
    assert blkid(seed, "TYPE") == "iso9660"
    assert b"Volume id: cidata\n" in isoinfo("-d", "-i", str(seed))


@pytest.mark.parametrize("names", ["-R", "-J"], ids=["rock-ridge", "joliet"])
def test_the_files_carry_their_nocloud_names_and_exact_text(seed, names):
    listing = isoinfo(names, "-f", "-i", str(seed)).decode().split()
    assert sorted(listing) == ["/meta-data", "/network-config", "/user-data"]
    for name, text in [("user-data", USER_DATA), ("meta-data", META_DATA), ("network-config", NETWORK_CONFIG)]:
        assert isoinfo(names, "-x", f"/{name}", "-i", str(seed)) == text.encode()


def test_network_config_is_left_out_unless_given(tmp_path):
    path = tmp_path / "seed.iso"
    write_seed_iso(path, user_data=USER_DATA, meta_data=META_DATA)
    assert sorted(isoinfo("-R", "-f", "-i", str(path)).decode().split()) == ["/meta-data", "/user-data"]


def test_read_seed_iso_returns_what_was_written(seed):
    assert read_seed_iso(seed) == {"user-data": USER_DATA, "meta-data": META_DATA, "network-config": NETWORK_CONFIG}


def test_read_seed_iso_reads_a_seed_made_by_genisoimage(tmp_path):
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "user-data").write_text(USER_DATA)
    (tmp_path / "files" / "meta-data").write_text(META_DATA)
    path = tmp_path / "other.iso"
    subprocess.run(
        ["genisoimage", "-quiet", "-output", str(path), "-volid", "cidata", "-joliet", "-rock", str(tmp_path / "files")],
        check=True,
    )
    assert read_seed_iso(path) == {"user-data": USER_DATA, "meta-data": META_DATA}


def test_the_seed_is_0644_and_nothing_else_is_left_in_its_directory(seed):
    assert (seed.stat().st_mode & 0o7777) == 0o644
    assert os.listdir(seed.parent) == ["seed.iso"]


def test_rewriting_replaces_the_whole_seed(seed):
    write_seed_iso(seed, user_data="#cloud-config\n", meta_data="instance-id: i-2\n")
    assert read_seed_iso(seed) == {"user-data": "#cloud-config\n", "meta-data": "instance-id: i-2\n"}
    assert os.listdir(seed.parent) == ["seed.iso"]


# A child process whose files may not grow past 32 KiB: the kernel refuses
# the ISO's write partway through (EFBIG), a real failure in mid-write.
WRITE_UNDER_A_FILE_SIZE_LIMIT = """
import resource, signal, sys
from pathlib import Path
from appliances.cloudinit import write_seed_iso
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, resource.RLIM_INFINITY))
write_seed_iso(Path(sys.argv[1]), user_data="#cloud-config\\n", meta_data="instance-id: i-3\\n")
"""


def write_under_a_file_size_limit(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WRITE_UNDER_A_FILE_SIZE_LIMIT, str(path)],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
    )


def test_a_write_that_fails_midway_leaves_no_file(tmp_path):
    path = tmp_path / "seed.iso"
    failed = write_under_a_file_size_limit(path)
    assert failed.returncode != 0 and "File too large" in failed.stderr
    assert os.listdir(tmp_path) == []


def test_a_write_that_fails_midway_leaves_the_previous_seed_whole(seed):
    before = seed.read_bytes()
    failed = write_under_a_file_size_limit(seed)
    assert failed.returncode != 0 and "File too large" in failed.stderr
    assert seed.read_bytes() == before
    assert read_seed_iso(seed)["meta-data"] == META_DATA
    assert os.listdir(seed.parent) == ["seed.iso"]


def test_a_seed_may_be_written_private(tmp_path):
    path = tmp_path / "seed.iso"
    write_seed_iso(path, user_data=USER_DATA, meta_data=META_DATA, mode=0o600)
    assert (path.stat().st_mode & 0o7777) == 0o600


def test_an_iso_without_rock_ridge_names_is_not_read_as_a_seed(tmp_path):
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "user-data").write_text(USER_DATA)
    path = tmp_path / "plain.iso"
    subprocess.run(["genisoimage", "-quiet", "-output", str(path), "-volid", "cidata", str(tmp_path / "files")], check=True)
    with pytest.raises(ValueError, match="no Rock Ridge names"):
        read_seed_iso(path)


def test_a_file_that_is_not_an_iso_is_refused(tmp_path):
    path = tmp_path / "junk.iso"
    path.write_bytes(b"not an image" * 4096)
    with pytest.raises(ValueError, match="is not a readable ISO 9660 image"):
        read_seed_iso(path)
