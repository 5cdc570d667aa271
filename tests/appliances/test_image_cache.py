"""The appliance image cache against real parts: a real HTTP server on
loopback, qemu-img, debootstrap, and QEMU booting the built image."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pycdlib
import pytest

from appliances import images
from appliances.images import ChecksumMismatch, ImageError

ROOT = Path(__file__).resolve().parents[2]
RECIPE = "debian-bookworm-local"
# Building the image the first time on a host takes about two minutes.
BUILD_TIMEOUT = pytest.mark.timeout(900)


@dataclass
class Route:
    file: Path | None = None
    status: int = 200
    delay: float = 0.0
    truncate: bool = False
    trickle: bool = False


@dataclass
class ImageServer:
    """http.server in a thread, counting the GETs of each path."""

    routes: dict[str, Route] = field(default_factory=dict)
    gets: Counter = field(default_factory=Counter)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def serve(self, path: str, **route) -> str:
        self.routes[path] = Route(**route)
        return self.url(path)

    def start(self) -> None:
        owner = self
        lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with lock:
                    owner.gets[self.path] += 1
                route = owner.routes.get(self.path)
                if route is None or route.status != 200:
                    self.send_error(route.status if route else 404)
                    return
                time.sleep(route.delay)
                size = route.file.stat().st_size
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                with open(route.file, "rb") as body:
                    if route.truncate:
                        self.wfile.write(body.read(size // 2))
                    elif route.trickle:
                        while piece := body.read(4096):
                            self.wfile.write(piece)
                            time.sleep(0.05)
                    else:
                        self.connection.sendfile(body)
                self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


@pytest.fixture()
def server():
    image_server = ImageServer()
    image_server.start()
    yield image_server
    image_server.stop()


@pytest.fixture()
def small_qcow2(tmp_path) -> Path:
    path = tmp_path / "published" / "small.qcow2"
    path.parent.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    return path


@pytest.fixture()
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


def hex_of(path: Path, algorithm: str = "sha256") -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, algorithm).hexdigest()


def leftovers(cache_dir: Path) -> list[str]:
    """Images and work in progress: what a failed fetch must not leave."""
    return [
        str(path.relative_to(cache_dir))
        for part in ("blobs", "tmp")
        if (cache_dir / part).exists()
        for path in (cache_dir / part).iterdir()
    ]


def test_fetch_caches_a_verified_image_read_only_and_never_downloads_it_again(server, small_qcow2, cache_dir):
    url = server.serve("/small.qcow2", file=small_qcow2)
    expected = hex_of(small_qcow2)
    seen = []

    image = images.fetch(url, algorithm="sha256", expected=expected, cache_dir=cache_dir, progress=lambda *p: seen.append(p))

    assert image.digest == f"sha256:{expected}"
    assert image.format == "qcow2"
    assert image.virtual_size == 64 * 1024 * 1024
    assert image.size == small_qcow2.stat().st_size
    assert (image.kernel, image.initrd) == (None, None)
    assert hex_of(image.disk) == expected
    assert seen[-1] == (image.size, image.size)
    assert stat.S_IMODE(image.disk.stat().st_mode) == 0o444
    for directory in (cache_dir, image.disk.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o755

    again = images.fetch(url, algorithm="sha256", expected=expected.upper(), cache_dir=cache_dir)

    assert again == image
    assert images.lookup("sha256", expected, cache_dir=cache_dir) == image
    assert server.gets["/small.qcow2"] == 1


def test_eight_threads_fetching_one_image_download_it_once(server, small_qcow2, cache_dir):
    url = server.serve("/small.qcow2", file=small_qcow2, delay=0.5)
    expected = hex_of(small_qcow2)
    start = threading.Barrier(8)
    results: list[object] = [None] * 8

    def fetch(index: int) -> None:
        start.wait()
        try:
            results[index] = images.fetch(url, algorithm="sha256", expected=expected, cache_dir=cache_dir)
        except Exception as exc:  # noqa: BLE001 - asserted on below
            results[index] = exc

    threads = [threading.Thread(target=fetch, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert all(isinstance(result, images.CachedImage) for result in results), results
    assert len(set(results)) == 1
    assert server.gets["/small.qcow2"] == 1
    assert os.listdir(cache_dir / "tmp") == []


def test_three_processes_fetching_one_image_download_it_once(server, small_qcow2, cache_dir):
    url = server.serve("/small.qcow2", file=small_qcow2, delay=0.5)
    expected = hex_of(small_qcow2)
    script = (
        "import sys; from pathlib import Path; from appliances import images; "
        "print(images.fetch(sys.argv[1], algorithm='sha256', expected=sys.argv[2], cache_dir=Path(sys.argv[3])).digest)"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, url, expected, str(cache_dir)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [process.communicate(timeout=60) for process in processes]

    assert [process.returncode for process in processes] == [0, 0, 0], outputs
    assert {stdout.strip() for stdout, _ in outputs} == {f"sha256:{expected}"}
    assert server.gets["/small.qcow2"] == 1


def test_fetch_verifies_sha512_too(server, small_qcow2, cache_dir):
    url = server.serve("/small.qcow2", file=small_qcow2)
    expected = hex_of(small_qcow2, "sha512")

    image = images.fetch(url, algorithm="sha512", expected=expected, cache_dir=cache_dir)

    assert image.digest == f"sha512:{expected}"
    assert image.disk.parent.name == f"sha512-{expected}"
    assert images.lookup("sha256", hex_of(small_qcow2), cache_dir=cache_dir) is None


def test_a_checksum_mismatch_names_both_digests_and_keeps_nothing(server, small_qcow2, cache_dir):
    url = server.serve("/small.qcow2", file=small_qcow2)
    published = hashlib.sha256(b"some other image").hexdigest()

    with pytest.raises(ChecksumMismatch) as raised:
        images.fetch(url, algorithm="sha256", expected=published, cache_dir=cache_dir)

    assert f"sha256:{published}" in str(raised.value)
    assert f"sha256:{hex_of(small_qcow2)}" in str(raised.value)
    assert leftovers(cache_dir) == []
    assert images.lookup("sha256", published, cache_dir=cache_dir) is None


def test_a_server_error_is_reported_and_keeps_nothing(server, cache_dir):
    url = server.serve("/gone.qcow2", status=500)

    with pytest.raises(ImageError, match="HTTP 500"):
        images.fetch(url, algorithm="sha256", expected="0" * 64, cache_dir=cache_dir)

    assert leftovers(cache_dir) == []


def test_a_refused_connection_is_reported_and_keeps_nothing(cache_dir):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]

    with pytest.raises(ImageError, match="Connection refused"):
        images.fetch(f"http://127.0.0.1:{port}/x.qcow2", algorithm="sha256", expected="0" * 64, cache_dir=cache_dir)

    assert leftovers(cache_dir) == []


def test_a_download_that_breaks_off_midway_is_reported_and_keeps_nothing(server, small_qcow2, cache_dir):
    url = server.serve("/small.qcow2", file=small_qcow2, truncate=True)

    with pytest.raises(ImageError, match="broke off"):
        images.fetch(url, algorithm="sha256", expected=hex_of(small_qcow2), cache_dir=cache_dir)

    assert leftovers(cache_dir) == []


def test_an_image_reading_a_host_file_as_backing_file_is_refused(server, tmp_path, cache_dir):
    sneaky = tmp_path / "sneaky.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/passwd", "-F", "raw", str(sneaky)], check=True)
    url = server.serve("/sneaky.qcow2", file=sneaky)

    with pytest.raises(ImageError, match="backing file"):
        images.fetch(url, algorithm="sha256", expected=hex_of(sneaky), cache_dir=cache_dir)

    assert leftovers(cache_dir) == []


@pytest.mark.parametrize("next_algorithm", ["sha256", "sha512"], ids=["same image", "another image"])
def test_the_work_of_a_killed_download_is_swept_by_the_next_fetch(server, small_qcow2, cache_dir, next_algorithm):
    url = server.serve("/small.qcow2", file=small_qcow2, trickle=True)
    expected = hex_of(small_qcow2)
    script = (
        "import sys; from pathlib import Path; from appliances import images; "
        "images.fetch(sys.argv[1], algorithm='sha256', expected=sys.argv[2], cache_dir=Path(sys.argv[3]))"
    )
    doomed = subprocess.Popen([sys.executable, "-c", script, url, expected, str(cache_dir)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while not list((cache_dir / "tmp").glob("*/blob/download")):
            assert time.monotonic() < deadline and doomed.poll() is None, "the download never started"
            time.sleep(0.05)
    finally:
        doomed.kill()
        doomed.wait()
    assert leftovers(cache_dir) != []

    server.routes["/small.qcow2"].trickle = False
    image = images.fetch(url, algorithm=next_algorithm, expected=hex_of(small_qcow2, next_algorithm), cache_dir=cache_dir)

    assert leftovers(cache_dir) == [str(image.disk.parent.relative_to(cache_dir))]
    assert server.gets["/small.qcow2"] == 2


def test_a_build_from_an_unreachable_mirror_fails_in_words_and_keeps_nothing(cache_dir):
    said = []

    with pytest.raises(ImageError, match=r"debootstrap could not install Debian bookworm from http://127\.0\.0\.1:9/debian"):
        images.build_local(RECIPE, cache_dir=cache_dir, mirror="http://127.0.0.1:9/debian", progress=said.append)

    assert said[:2] == ["debootstrap: starting", "debootstrap: reading the package index"]
    assert leftovers(cache_dir) == []
    assert os.listdir(cache_dir / "recipes") == []


@pytest.fixture(scope="module")
def built_image() -> images.CachedImage:
    """The real local image in the host's cache, built there on first use
    (later tests and the product reuse it)."""
    return images.build_local(RECIPE, cache_dir=images.default_cache_dir())


@BUILD_TIMEOUT
def test_building_again_returns_the_cached_image_at_once(built_image):
    started = time.monotonic()
    again = images.build_local(RECIPE, cache_dir=images.default_cache_dir())
    elapsed = time.monotonic() - started

    assert again == built_image
    assert elapsed < 1
    assert images.lookup_local(RECIPE, cache_dir=images.default_cache_dir()) == built_image
    assert built_image.format == "qcow2"
    assert built_image.kernel.stat().st_size > 1_000_000
    assert built_image.initrd.stat().st_size > 1_000_000
    for path in (built_image.disk, built_image.kernel, built_image.initrd):
        assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert built_image.digest == f"sha256:{hex_of(built_image.disk)}"


@BUILD_TIMEOUT
def test_other_unix_users_can_read_the_built_image(built_image):
    """Session libvirtd daemons run QEMU as their own users."""
    for path in (built_image.disk, built_image.kernel, built_image.initrd):
        read = subprocess.run(["runuser", "-u", "nobody", "--", "head", "-c", "4096", str(path)], capture_output=True)
        assert read.returncode == 0 and len(read.stdout) == 4096, read.stderr


def test_building_without_root_says_it_needs_root():
    # Somewhere nobody may look (tmp_path is root's 0700), and must not create.
    cache_dir = Path("/tmp") / f"infrasim-cache-of-nobody-{os.getpid()}"
    script = (
        "import sys; from pathlib import Path; from appliances import images\n"
        "try: images.build_local('debian-bookworm-local', cache_dir=Path(sys.argv[1]))\n"
        "except images.ImageError as exc: print(exc)"
    )
    result = subprocess.run(
        ["runuser", "-u", "nobody", "--", "env", f"PYTHONPATH={ROOT}", "python3", "-c", script, str(cache_dir)],
        capture_output=True,
        text=True,
        cwd="/",
    )

    assert "needs root" in result.stdout, result.stderr
    assert not cache_dir.exists()


@BUILD_TIMEOUT
def test_the_download_path_fetches_a_built_image_from_a_local_server(built_image, server, cache_dir):
    url = server.serve("/debian.qcow2", file=built_image.disk)
    algorithm, _, expected = built_image.digest.partition(":")

    fetched = images.fetch(url, algorithm=algorithm, expected=expected, cache_dir=cache_dir)

    assert fetched.digest == built_image.digest
    assert (fetched.size, fetched.virtual_size, fetched.format) == (built_image.size, built_image.virtual_size, "qcow2")
    assert server.gets["/debian.qcow2"] == 1


def nocloud_seed(path: Path, *, user_data: str, meta_data: str) -> None:
    iso = pycdlib.PyCdlib()
    iso.new(joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for name, iso_name, text in (("user-data", "USERDATA", user_data), ("meta-data", "METADATA", meta_data)):
        data = text.encode()
        iso.add_fp(io.BytesIO(data), len(data), iso_path=f"/{iso_name}.;1", rr_name=name, joliet_path=f"/{name}")
    iso.write(str(path))
    iso.close()


def guest_agent_call(sock: socket.socket, command: dict) -> dict:
    sock.sendall(json.dumps(command).encode() + b"\n")
    answer = b""
    while not answer.endswith(b"\n"):
        answer += sock.recv(65536)
    return json.loads(answer)


@BUILD_TIMEOUT
def test_the_built_image_boots_with_cloud_init_dhcp_wireguard_and_guest_agent(built_image, tmp_path):
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(built_image.disk), "-F", "qcow2", str(overlay), "4G"],
        check=True,
    )
    private_key = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
    user_data = f"""#cloud-config
write_files:
  - path: /etc/wireguard/wg0.conf
    permissions: '0600'
    content: |
      [Interface]
      PrivateKey = {private_key}
      Address = 10.99.0.2/24
runcmd:
  - [sh, -c, 'echo PROBE-ADDRESS $(ip -4 -o addr show scope global | cut -d" " -f2,7)']
  - [sh, -c, 'wg-quick up wg0 && echo PROBE-WIREGUARD up']
  - [sh, -c, 'echo PROBE-ROOT-SIZE $(df --output=size -B1M / | tail -1)']
"""
    nocloud_seed(tmp_path / "seed.iso", user_data=user_data, meta_data="instance-id: iid-boot-test\nlocal-hostname: probe\n")
    console, agent_socket = tmp_path / "console.log", tmp_path / "qga.sock"
    started = time.monotonic()
    qemu = subprocess.Popen(
        ["qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-display", "none", "-monitor", "none",
         "-serial", f"file:{console}", "-kernel", str(built_image.kernel), "-initrd", str(built_image.initrd),
         "-append", "root=/dev/vda console=ttyS0", "-drive", f"file={overlay},if=virtio,format=qcow2",
         "-cdrom", str(tmp_path / "seed.iso"), "-nic", "user,model=virtio-net-pci",
         "-device", "virtio-serial", "-chardev", f"socket,path={agent_socket},server=on,wait=off,id=qga0",
         "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        output = ""
        while "Cloud-init v." not in output or " finished at " not in output:
            assert qemu.poll() is None, f"QEMU exited with {qemu.returncode}"
            assert time.monotonic() - started < 400, f"cloud-init did not finish:\n{output[-3000:]}"
            time.sleep(1)
            output = console.read_text(errors="replace")
        print(f"cloud-init finished {time.monotonic() - started:.0f} s after QEMU started")
        with socket.socket(socket.AF_UNIX) as agent:
            agent.settimeout(30)
            agent.connect(str(agent_socket))
            assert guest_agent_call(agent, {"execute": "guest-sync", "arguments": {"id": 7}}) == {"return": 7}
            assert guest_agent_call(agent, {"execute": "guest-ping"}) == {"return": {}}
    finally:
        qemu.kill()
        qemu.wait()

    assert re.search(r"PROBE-ADDRESS \S+ 10\.0\.2\.15/24", output), "no DHCP address from QEMU's user network"
    assert "PROBE-WIREGUARD up" in output
    root_mib = int(re.search(r"PROBE-ROOT-SIZE (\d+)", output).group(1))
    assert root_mib > 3500, "cloud-init did not grow the root filesystem to the overlay's size"
    assert "probe login:" in output, "no login prompt on the serial console"
