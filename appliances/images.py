"""The per-host, content-addressed cache of appliance template images.

Images are either downloaded (`fetch`, verified against a published
checksum) or built here from a recipe (`build_local`, debootstrap). Layout
under the cache directory:

    blobs/<algorithm>-<hex>/   disk.qcow2 or disk.img, image.json, and for
                               built images vmlinuz and initrd.img
    recipes/<recipe key>       the digest of the image that recipe built
    locks/<name>.lock          flock'd by whoever writes blobs/<name> or a recipe
    tmp/<name>.<random>/       work in progress, renamed into place when complete

Directories are 0755 and images 0444: QEMU processes of other Unix users
(session libvirtd daemons) open the images, kernels and initrds. A blob
directory appears by one rename with everything in it, so a reader sees a
complete image or none. Writers of one digest or recipe serialize on a flock,
which excludes threads (each opens its own descriptor) as well as processes.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import json
import lzma
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

HEX_LENGTHS = {"sha256": 64, "sha512": 128}
DOWNLOAD_TIMEOUT_SECONDS = 60
CHUNK_BYTES = 1 << 20
FALLBACK_DEBIAN_MIRROR = "http://deb.debian.org/debian"
# qemu-img parses untrusted headers: bound it, as OpenStack does (CVE-2015-5162).
QEMU_IMG_LIMITS = ["prlimit", "--as=1073741824", "--cpu=30"]
DISK_NAMES = {"qcow2": "disk.qcow2", "raw": "disk.img"}


class ImageError(Exception):
    """A failure to get an image, in words fit to show the user."""


class ChecksumMismatch(ImageError):
    def __init__(self, url: str, expected: str, actual: str):
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"The image downloaded from {url} is not the published one: "
            f"its checksum is {actual}, but {expected} was expected."
        )


@dataclass(frozen=True)
class CachedImage:
    digest: str
    disk: Path
    kernel: Path | None
    initrd: Path | None
    size: int
    virtual_size: int
    format: str


@dataclass(frozen=True)
class Recipe:
    """Everything that decides what a locally built image contains. Its hash
    is the recipe key, so any change here builds a new image."""

    suite: str
    packages: tuple[str, ...]
    disk_size: str
    guest_files: tuple[tuple[str, str], ...]
    removed_globs: tuple[str, ...]


# Bump when the build code changes what it makes from the same Recipe.
BUILD_STEPS_VERSION = 1

RECIPES = {
    "debian-bookworm-local": Recipe(
        suite="bookworm",
        packages=(
            "linux-image-cloud-amd64",
            "systemd-sysv",
            "cloud-init",
            "udev",
            "ifupdown",
            "isc-dhcp-client",
            "netbase",
            "wireguard-tools",
            "openssh-server",
            "qemu-guest-agent",
            "iproute2",
            "iputils-ping",
            "e2fsprogs",
            "ca-certificates",
            # systemd-logind needs D-Bus; without it the ACPI power button
            # (a clean shutdown from the host) does nothing.
            "dbus",
            # debootstrap does not resolve python3-cryptography's virtual
            # dependency python3-cffi-backend-api-*; naming it avoids the failure.
            "python3-cffi-backend",
        ),
        disk_size="2G",
        guest_files=(
            # cloud-init writes its fallback DHCP config into interfaces.d.
            ("etc/network/interfaces", "auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n"),
            ("etc/fstab", "LABEL=root / ext4 defaults,errors=remount-ro 0 1\n"),
            # Appliances always get a NoCloud seed; probing other clouds costs minutes.
            # C.UTF-8 is the only UTF-8 locale without the locales package, and
            # cloud-init's default (en_US.UTF-8) fails its locale module.
            ("etc/cloud/cloud.cfg.d/90_infrasim.cfg", "datasource_list: [ NoCloud, None ]\nlocale: C.UTF-8\n"),
            # Empty: systemd makes a new one on each clone's first boot.
            ("etc/machine-id", ""),
            ("etc/hostname", "localhost\n"),
            # debootstrap copies the build host's resolver; dhclient writes the guest's.
            ("etc/resolv.conf", ""),
            # The image must not depend on the mirror it was built from.
            (
                "etc/apt/sources.list",
                "deb http://deb.debian.org/debian bookworm main\n"
                "deb http://deb.debian.org/debian bookworm-updates main\n"
                "deb http://deb.debian.org/debian-security bookworm-security main\n",
            ),
        ),
        removed_globs=(
            # cloud-init generates host keys per instance.
            "etc/ssh/ssh_host_*",
            "var/lib/dbus/machine-id",
            "var/cache/apt/*.bin",
            "var/cache/apt/archives/*.deb",
            "var/lib/apt/lists/*_*",
            "var/log/*.log",
        ),
    ),
}

# debootstrap's own phase lines, first match wins; the lines about single
# packages while unpacking or configuring keep the phase they are in.
DEBOOTSTRAP_PHASES = (
    ("I: Retrieving InRelease", "debootstrap: reading the package index"),
    ("I: Retrieving Release", "debootstrap: reading the package index"),
    ("I: Retrieving Packages", "debootstrap: reading the package index"),
    ("I: Retrieving ", "debootstrap: downloading packages"),
    ("I: Extracting ", "debootstrap: extracting packages"),
    ("I: Installing core packages", "debootstrap: installing the core packages"),
    ("I: Configuring required packages", "debootstrap: configuring the core packages"),
    ("I: Unpacking the base system", "debootstrap: installing the other packages"),
    ("I: Configuring the base system", "debootstrap: configuring the other packages"),
)


def default_cache_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/cache/infrasim")
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "infrasim"


def recipe_key(recipe: str) -> str:
    definition = {"recipe": asdict(_recipe(recipe)), "build_steps_version": BUILD_STEPS_VERSION}
    canonical = json.dumps(definition, sort_keys=True).encode()
    return f"{recipe}-{hashlib.sha256(canonical).hexdigest()[:16]}"


def lookup(algorithm: str, expected: str, *, cache_dir: Path) -> CachedImage | None:
    digest = _digest(algorithm, expected)
    blob = cache_dir / "blobs" / _blob_name(digest)
    try:
        info = json.loads((blob / "image.json").read_text())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ImageError(f"The image cache {cache_dir} cannot be read: {exc.strerror or exc}.") from exc
    disk = blob / DISK_NAMES[info["format"]]
    kernel, initrd = blob / "vmlinuz", blob / "initrd.img"
    return CachedImage(
        digest=digest,
        disk=disk,
        kernel=kernel if kernel.exists() else None,
        initrd=initrd if initrd.exists() else None,
        size=disk.stat().st_size,
        virtual_size=info["virtual_size"],
        format=info["format"],
    )


def lookup_local(recipe: str, *, cache_dir: Path) -> CachedImage | None:
    try:
        digest = (cache_dir / "recipes" / recipe_key(recipe)).read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ImageError(f"The image cache {cache_dir} cannot be read: {exc.strerror or exc}.") from exc
    algorithm, _, hex_digest = digest.partition(":")
    return lookup(algorithm, hex_digest, cache_dir=cache_dir)


def fetch(
    url: str,
    *,
    algorithm: str,
    expected: str,
    cache_dir: Path,
    progress: Callable[[int, int | None], None] | None = None,
) -> CachedImage:
    """The image at `url`, downloaded once per host and verified against
    `expected` (hex) before anyone can use it."""
    digest = _digest(algorithm, expected)
    if cached := lookup(algorithm, expected, cache_dir=cache_dir):
        return cached
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ImageError(f"Images are downloaded over http or https, and {url!r} is neither.")
    _make_layout(cache_dir)
    name = _blob_name(digest)
    with _locked(cache_dir, name):
        if cached := lookup(algorithm, expected, cache_dir=cache_dir):
            return cached
        with _workspace(cache_dir, name) as work:
            blob = work / "blob"
            blob.mkdir()
            download = blob / "download"
            actual = _download(url, download, algorithm, progress)
            if actual != digest.partition(":")[2]:
                raise ChecksumMismatch(url, digest, f"{algorithm}:{actual}")
            if tarfile.is_tarfile(download):
                download = _unpack_disk(download)
            disk_format, virtual_size = _inspect(download)
            download.rename(blob / DISK_NAMES[disk_format])
            _install_blob(cache_dir, blob, name, disk_format, virtual_size)
    return lookup(algorithm, expected, cache_dir=cache_dir)


def build_local(
    recipe: str,
    *,
    cache_dir: Path,
    mirror: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> CachedImage:
    """The image `recipe` describes, built once per host with debootstrap
    (about two minutes) and booted by direct kernel boot with root=/dev/vda."""
    definition = _recipe(recipe)
    if cached := lookup_local(recipe, cache_dir=cache_dir):
        return cached
    if os.geteuid() != 0:
        raise ImageError(
            f"Building the {recipe} image needs root (debootstrap and chroot), and this worker "
            "does not run as root. Build it once as root or use a downloadable image."
        )
    say = progress or (lambda phrase: None)
    key = recipe_key(recipe)
    _make_layout(cache_dir)
    with _locked(cache_dir, f"recipe-{key}"):
        if cached := lookup_local(recipe, cache_dir=cache_dir):
            return cached
        with _workspace(cache_dir, f"recipe-{key}") as work:
            root, blob = work / "root", work / "blob"
            blob.mkdir()
            _debootstrap(definition, root, mirror or host_debian_mirror(), say)
            say("configuring the guest")
            _configure_guest(definition, root)
            _copy_boot_files(root, blob)
            say("making the filesystem")
            raw = work / "disk.raw"
            _run(["mke2fs", "-q", "-t", "ext4", "-d", str(root), "-L", "root", str(raw), definition.disk_size])
            say("converting the disk to qcow2")
            _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(blob / "disk.qcow2")])
            raw.unlink()
            say("computing the image checksum")
            digest = f"sha256:{_file_hex(blob / 'disk.qcow2', 'sha256')}"
            disk_format, virtual_size = _inspect(blob / "disk.qcow2")
            name = _blob_name(digest)
            with _locked(cache_dir, name):
                if not (cache_dir / "blobs" / name).exists():
                    _install_blob(cache_dir, blob, name, disk_format, virtual_size)
            _write_recipe_record(cache_dir, key, digest)
    return lookup_local(recipe, cache_dir=cache_dir)


def host_debian_mirror(apt_dir: Path = Path("/etc/apt"), os_release: Path = Path("/etc/os-release")) -> str:
    """The Debian mirror this host installs from (the entry serving its own
    release), or deb.debian.org when the host is not Debian or names none."""
    release = _os_release(os_release)
    if release.get("ID") != "debian" or not release.get("VERSION_CODENAME"):
        return FALLBACK_DEBIAN_MIRROR
    entries: list[tuple[list[str], list[str]]] = []
    for path in sorted(apt_dir.glob("sources.list.d/*.sources")):
        entries += parse_deb822_sources(path.read_text())
    for path in [apt_dir / "sources.list", *sorted(apt_dir.glob("sources.list.d/*.list"))]:
        if path.is_file():
            entries += parse_one_line_sources(path.read_text())
    for uris, suites in entries:
        if release["VERSION_CODENAME"] in suites and uris:
            return uris[0].rstrip("/")
    return FALLBACK_DEBIAN_MIRROR


def parse_deb822_sources(text: str) -> list[tuple[list[str], list[str]]]:
    """(URIs, suites) of each enabled binary `deb` stanza of a .sources file."""
    entries = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        current = None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and current:
                fields[current] += " " + line.strip()
            elif ":" in line:
                current, _, value = line.partition(":")
                current = current.strip().lower()
                fields[current] = value.strip()
        if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes").lower() != "no":
            entries.append((fields.get("uris", "").split(), fields.get("suites", "").split()))
    return entries


def parse_one_line_sources(text: str) -> list[tuple[list[str], list[str]]]:
    """(URIs, suites) of each `deb` line of a sources.list file."""
    entries = []
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb":
            entries.append(([words[1]], [words[2]]))
    return entries


def _os_release(path: Path) -> dict[str, str]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return {}
    pairs = (line.split("=", 1) for line in lines if "=" in line)
    return {key.strip(): value.strip().strip("\"'") for key, value in pairs}


def _recipe(recipe: str) -> Recipe:
    try:
        return RECIPES[recipe]
    except KeyError:
        raise ImageError(f"There is no image recipe named {recipe!r}; known recipes: {', '.join(sorted(RECIPES))}.") from None


def _digest(algorithm: str, expected: str) -> str:
    if algorithm not in HEX_LENGTHS:
        raise ImageError(f"Checksums must be sha256 or sha512, not {algorithm!r}.")
    hex_digest = expected.strip().lower()
    if len(hex_digest) != HEX_LENGTHS[algorithm] or not re.fullmatch(r"[0-9a-f]+", hex_digest):
        raise ImageError(f"{expected!r} is not a {algorithm} checksum: it must be {HEX_LENGTHS[algorithm]} hexadecimal digits.")
    return f"{algorithm}:{hex_digest}"


def _blob_name(digest: str) -> str:
    return digest.replace(":", "-")


def _make_dir(path: Path) -> None:
    if path.is_dir():
        return
    _make_dir(path.parent)
    try:
        path.mkdir()
    except FileExistsError:
        return
    # Not left to the umask: other users' QEMU must traverse the cache.
    os.chmod(path, 0o755)


def _make_layout(cache_dir: Path) -> None:
    try:
        for part in ("blobs", "recipes", "locks", "tmp"):
            _make_dir(cache_dir / part)
    except OSError as exc:
        raise ImageError(f"The image cache {cache_dir} cannot be created: {exc.strerror or exc}.") from exc


@contextmanager
def _locked(cache_dir: Path, name: str) -> Iterator[None]:
    descriptor = os.open(cache_dir / "locks" / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        _sweep_stale_work(cache_dir, held=name)
        yield
    finally:
        os.close(descriptor)


def _sweep_stale_work(cache_dir: Path, *, held: str) -> None:
    """Remove work left by writers that died: ours (we hold its lock now),
    and others' whose lock nobody holds."""
    for entry in (cache_dir / "tmp").iterdir():
        owner = entry.name.rpartition(".")[0]
        if owner == held:
            _remove(entry)
            continue
        try:
            descriptor = os.open(cache_dir / "locks" / f"{owner}.lock", os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        else:
            _remove(entry)
        finally:
            os.close(descriptor)


@contextmanager
def _workspace(cache_dir: Path, owner: str) -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix=f"{owner}.", dir=cache_dir / "tmp"))
    try:
        yield work
    finally:
        _remove(work)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _install_blob(cache_dir: Path, blob: Path, name: str, disk_format: str, virtual_size: int) -> None:
    (blob / "image.json").write_text(json.dumps({"format": disk_format, "virtual_size": virtual_size}) + "\n")
    for file in blob.iterdir():
        os.chmod(file, 0o444)
    os.chmod(blob, 0o755)
    os.rename(blob, cache_dir / "blobs" / name)


def _write_recipe_record(cache_dir: Path, key: str, digest: str) -> None:
    descriptor, temporary = tempfile.mkstemp(prefix=f"recipe-{key}.", dir=cache_dir / "tmp")
    with os.fdopen(descriptor, "w") as record:
        record.write(digest + "\n")
    os.chmod(temporary, 0o644)
    os.replace(temporary, cache_dir / "recipes" / key)


def _download(url: str, destination: Path, algorithm: str, progress: Callable[[int, int | None], None] | None) -> str:
    """Stream `url` into `destination`, hashing on the way; the hex digest."""
    hasher = hashlib.new(algorithm)
    received = 0
    request = urllib.request.Request(url, headers={"User-Agent": "InfraSim image cache"})
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response, open(destination, "xb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            while chunk := response.read(CHUNK_BYTES):
                hasher.update(chunk)
                out.write(chunk)
                received += len(chunk)
                if progress:
                    progress(received, total)
    except urllib.error.HTTPError as exc:
        raise ImageError(f"The server refused the image at {url}: HTTP {exc.code} {exc.reason}.") from exc
    except urllib.error.URLError as exc:
        reason = getattr(exc.reason, "strerror", None) or str(exc.reason)
        raise ImageError(f"Could not download the image at {url}: {reason}.") from exc
    except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
        raise ImageError(f"The download of {url} broke off after {received} bytes: {exc or type(exc).__name__}.") from exc
    except OSError as exc:
        raise ImageError(f"Could not store the image in {destination.parent}: {exc.strerror or exc}.") from exc
    if total is not None and received != total:
        raise ImageError(f"The download of {url} broke off after {received} of {total} bytes.")
    return hasher.hexdigest()


DISK_MEMBER_SUFFIXES = (".raw", ".img", ".qcow2")


def _unpack_disk(archive: Path) -> Path:
    """Some publishers ship the image in a tarball (Kali: disk.raw in a
    .tar.xz). The digest covers the archive; the one disk inside becomes the
    cached image, written under a fixed name (member paths are never used)."""
    unpacked = archive.with_name("unpacked")
    try:
        with tarfile.open(archive, "r:*") as tar:
            disks = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(DISK_MEMBER_SUFFIXES)]
            if len(disks) != 1:
                raise ImageError(f"The archive holds {len(disks)} disk images; exactly one is needed.")
            with tar.extractfile(disks[0]) as source, open(unpacked, "xb") as out:
                shutil.copyfileobj(source, out, CHUNK_BYTES)
    except (tarfile.TarError, EOFError, lzma.LZMAError) as exc:
        raise ImageError(f"The image archive cannot be read: {exc}.") from exc
    archive.unlink()
    return unpacked


def _inspect(disk: Path) -> tuple[str, int]:
    """(format, virtual size) of a disk image, refusing images that would
    make QEMU open other files of this host."""
    output = _run([*QEMU_IMG_LIMITS, "qemu-img", "info", "--output=json", str(disk)], tool="qemu-img")
    info = json.loads(output)
    disk_format = info.get("format")
    if disk_format not in DISK_NAMES:
        raise ImageError(f"The image is in {disk_format} format; appliances run qcow2 or raw images.")
    if info.get("backing-filename"):
        raise ImageError(
            f"The image depends on a backing file ({info['backing-filename']}); only self-contained images are accepted."
        )
    if info.get("format-specific", {}).get("data", {}).get("data-file"):
        raise ImageError("The image keeps its data in an external file; only self-contained images are accepted.")
    return disk_format, int(info["virtual-size"])


def _file_hex(path: Path, algorithm: str) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, algorithm).hexdigest()


def _debootstrap(recipe: Recipe, root: Path, mirror: str, say: Callable[[str], None]) -> None:
    # A private mount namespace: the /proc and /sys debootstrap mounts in the
    # root vanish with it, even if debootstrap is killed, so removing the
    # work directory can never descend into the host's.
    command = [
        "unshare", "--mount", "--propagation", "private",
        "debootstrap", "--variant=minbase", f"--include={','.join(recipe.packages)}",
        recipe.suite, str(root), mirror,
    ]  # fmt: skip
    say("debootstrap: starting")
    tail: list[str] = []
    phrase = "debootstrap: starting"
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            tail = [*tail[-19:], line.rstrip()]
            phase = next((said for prefix, said in DEBOOTSTRAP_PHASES if line.startswith(prefix)), phrase)
            if phase != phrase:
                phrase = phase
                say(phrase)
    if process.returncode != 0:
        problems = [line for line in tail if line.startswith(("E:", "W:"))] or tail[-3:]
        raise ImageError(
            f"debootstrap could not install Debian {recipe.suite} from {mirror} (exit status {process.returncode}): "
            + " ".join(problems[-3:])
        )
    audit = subprocess.run(["chroot", str(root), "dpkg", "--audit"], capture_output=True, text=True, check=False)
    if audit.returncode != 0 or audit.stdout.strip():
        raise ImageError(f"Some packages in the image did not finish installing: {(audit.stdout + audit.stderr).strip()}")


def _configure_guest(recipe: Recipe, root: Path) -> None:
    for relative, content in recipe.guest_files:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        path.write_text(content)
        os.chmod(path, 0o644)
    for pattern in recipe.removed_globs:
        for path in root.glob(pattern):
            _remove(path)


def _copy_boot_files(root: Path, blob: Path) -> None:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise ImageError(f"The image should hold exactly one kernel, and it holds {len(kernels)}.")
    version = kernels[0].name.removeprefix("vmlinuz-")
    initrd = root / "boot" / f"initrd.img-{version}"
    if not initrd.is_file():
        raise ImageError(f"The image has no initrd for its kernel {version}.")
    shutil.copyfile(kernels[0], blob / "vmlinuz")
    shutil.copyfile(initrd, blob / "initrd.img")


def _run(command: list[str], *, tool: str | None = None) -> str:
    tool = tool or command[0]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise ImageError(f"{exc.filename or tool} is not installed on this host.") from exc
    if completed.returncode != 0:
        detail = (completed.stderr or completed.stdout).strip().splitlines()
        raise ImageError(f"{tool} failed: {detail[-1] if detail else f'exit status {completed.returncode}'}")
    return completed.stdout
