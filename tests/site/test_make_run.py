"""`make run` as a newcomer meets it: `python -m infrasim_site.stack` on a
custom port, in a scratch state directory, with its private Redis, the real
uvicorn, Celery worker and (as root) the wireguard-go gateway."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests

from infrasim_site.localredis import free_port
from infrasim_site.stack import gateway_unavailable, loopback_endpoint_warning
from tests.webauthn_authenticator import SoftAuthenticator

ROOT = Path(__file__).resolve().parents[2]
URL_LINE = re.compile(r"InfraSim is ready: open (http://\S+)/ ")
# Variables the test bootstrap sets for the in-process live server; a newcomer has none of them.
BOOTSTRAP_ONLY = {"REDIS_URL", "WEBAUTHN_RP_ORIGIN", "WEBAUTHN_RP_ID", "ALLOWED_HOSTS", "DATABASE_URL", "THROTTLE_RATES"}


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Stack:
    """The stack in its own process group, as a terminal runs it; its output
    is collected line by line with the time each line arrived."""

    def __init__(self, var_dir: Path):
        self.port = free_port()
        self.interface = f"wgmr{os.getpid() % 100000}{var_dir.name[-3:]}"[:15]
        self.env = {key: value for key, value in os.environ.items() if key not in BOOTSTRAP_ONLY}
        self.env.update(
            INFRASIM_VAR_DIR=str(var_dir),
            INFRASIM_PORT=str(self.port),
            INFRASIM_PRIVATE_REDIS_PORT=str(free_port()),
            WG_GATEWAY_INTERFACE=self.interface,
            WG_GATEWAY_ENDPOINT=f"127.0.0.1:{free_udp_port()}",
        )
        self.var_dir = var_dir
        # The local hypervisor's state (as root), kept apart per stack and removed with it.
        self.hypervisor_dir = Path(tempfile.mkdtemp(prefix="isim-mr-"))
        self.env["APPLIANCE_HYPERVISOR_DIR"] = str(self.hypervisor_dir)
        self.lines: list[tuple[float, str]] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "infrasim_site.stack"],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    @property
    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def wait_for_url(self, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, line in self.lines:
                if match := URL_LINE.search(line):
                    return match.group(1)
            assert self.process.poll() is None, f"the stack exited with {self.process.returncode}:\n{self.output}"
            time.sleep(0.2)
        raise AssertionError(f"no URL after {timeout} s:\n{self.output}")

    def banner(self) -> list[str]:
        """The stack's own block: from the blank line before "Redis:" to the URL line."""
        texts = [line for _, line in self.lines]
        end = next(i for i, line in enumerate(texts) if URL_LINE.search(line))
        start = max(i for i, line in enumerate(texts[:end]) if line.strip().startswith("Redis:"))
        return texts[start : end + 1]

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C: SIGINT to the whole foreground process group."""
        os.killpg(self.process.pid, signal.SIGINT)
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def leftover_processes(self) -> list[str]:
        """Processes still carrying this run's state directory (or, for the
        hypervisor's libvirtd, virtlogd and guests, its directory) in their
        environment."""
        markers = (f"INFRASIM_VAR_DIR={self.var_dir}\0".encode(), f"HOME={self.hypervisor_dir}\0".encode())
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                environ = (proc / "environ").read_bytes()
                if any(marker in environ for marker in markers):
                    found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
        return found

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture()
def stack_factory(tmp_path):
    stacks = []

    def start(name: str) -> Stack:
        var_dir = tmp_path / name
        var_dir.mkdir()
        stack = Stack(var_dir)
        stacks.append(stack)
        return stack

    yield start
    for stack in stacks:
        if stack.process.poll() is None:
            stack.interrupt()
        shutil.rmtree(stack.hypervisor_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def running_stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("stack"))
    try:
        stack.wait_for_url()
        yield stack
    finally:
        if stack.process.poll() is None:
            try:
                stack.interrupt()
            except subprocess.TimeoutExpired:
                stack.kill()
        shutil.rmtree(stack.hypervisor_dir, ignore_errors=True)


# Ctrl-C runs first, on its own stack, before the module's shared stack starts.
def test_ctrl_c_stops_every_process_with_exit_code_0_and_no_traceback(stack_factory):
    stack = stack_factory("ctrl-c")
    stack.wait_for_url()
    with_gateway = gateway_unavailable() == ""
    if with_gateway:
        assert Path(f"/sys/class/net/{stack.interface}").exists(), stack.output
    ready_at = stack.lines[-1][0]
    time.sleep(20)
    idle_lines = [line for at, line in stack.lines if at > ready_at]
    # Beat used to log a line every 5 s, and uvicorn one per request.
    assert len(idle_lines) <= 2, idle_lines

    code = stack.interrupt()

    assert code == 0, stack.output
    assert "Traceback" not in stack.output, stack.output
    assert stack.leftover_processes() == []
    assert not Path(f"/sys/class/net/{stack.interface}").exists()


def test_the_url_on_the_custom_port_is_the_last_line_of_the_banner(running_stack):
    banner = running_stack.banner()
    assert URL_LINE.search(banner[-1]).group(1) == f"http://localhost:{running_stack.port}"
    assert "Ctrl-C stops everything" in "\n".join(banner)
    # The banner comes once everything answers: the page, the worker, the gateway.
    assert requests.get(f"http://localhost:{running_stack.port}/signin/", timeout=10).status_code == 200


def test_the_celery_banner_and_startup_chatter_are_gone(running_stack):
    output = running_stack.output
    assert "[tasks]" not in output
    assert "superuser privileges" not in output
    assert "Uvicorn running on" not in output
    assert "Applying " not in output
    assert "kernel has first class support" not in output


def test_a_passkey_sign_up_succeeds_on_the_custom_port(running_stack):
    origin = f"http://localhost:{running_stack.port}"
    session = requests.Session()
    session.headers["Origin"] = origin
    options = session.post(f"{origin}/api/meshnet/auth/register/options", json={"display_name": "Newcomer"}, timeout=10)
    assert options.status_code == 200, options.text
    assert options.json()["rp"]["id"] == "localhost"
    # The browser reports the page's origin; the server must expect that same one.
    device = SoftAuthenticator(rp_id="localhost", origin=origin)
    created = session.post(f"{origin}/api/meshnet/auth/register/verify", json=device.create(options.json()), timeout=10)
    assert created.status_code == 201, created.text
    assert session.get(f"{origin}/api/meshnet/me", timeout=10).json()["user"]["display_name"] == "Newcomer"


def test_createoperator_prints_an_enrollment_link_on_the_custom_port(running_stack):
    result = subprocess.run(
        [sys.executable, "manage.py", "createoperator", "Ops Olga"],
        cwd=ROOT,
        env=running_stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    link = result.stdout.strip().splitlines()[-1]
    assert link.startswith(f"http://localhost:{running_stack.port}/enroll/"), result.stdout
    assert requests.get(link, timeout=10).status_code == 200
    # The banner's hint carries the port, so the link works from another terminal too.
    assert f"INFRASIM_PORT={running_stack.port} " in running_stack.output


def test_a_loopback_gateway_endpoint_is_warned_about_at_start(running_stack):
    banner = "\n".join(running_stack.banner())
    assert "a loopback address only this machine reaches" in banner
    assert "WG_GATEWAY_ENDPOINT" in banner


@pytest.mark.parametrize(
    "endpoint, warned",
    [
        ("127.0.0.1:51820", True),
        ("127.9.9.9:51820", True),
        ("[::1]:51820", True),
        ("localhost:51820", True),
        ("203.0.113.7:51820", False),
        ("[2001:db8::1]:51820", False),
        ("vpn.example.com:51820", False),
    ],
)
def test_only_a_loopback_endpoint_is_warned_about(endpoint, warned):
    warning = loopback_endpoint_warning(endpoint, configured=endpoint, admin_url=None)
    assert bool(warning) is warned
    if warned:
        assert "WG_GATEWAY_ENDPOINT=<public host or address>:51820" in warning


def test_an_existing_network_is_fixed_in_the_admin_not_by_the_variable():
    warning = loopback_endpoint_warning(
        "127.0.0.1:51820", configured="vpn.example.com:51820", admin_url="http://localhost:8080/admin/mesh/meshnetwork/1/change/"
    )
    assert "http://localhost:8080/admin/mesh/meshnetwork/1/change/" in warning
    assert "only when a network is created" in warning


@pytest.mark.parametrize("variable, value", [("LOG_LEVEL", "LOUD"), ("INFRASIM_PORT", "http"), ("INFRASIM_ACCESS_LOG", "maybe")])
def test_a_bad_value_stops_make_run_with_a_message_naming_the_variable(tmp_path, variable, value):
    env = {key: current for key, current in os.environ.items() if key not in BOOTSTRAP_ONLY}
    env.update({"INFRASIM_VAR_DIR": str(tmp_path), variable: value})
    result = subprocess.run(
        [sys.executable, "-m", "infrasim_site.stack"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"InfraSim cannot start: {variable}:"), result.stderr


def test_a_port_already_in_use_stops_make_run_before_anything_starts(tmp_path):
    env = {key: current for key, current in os.environ.items() if key not in BOOTSTRAP_ONLY}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env.update(INFRASIM_VAR_DIR=str(tmp_path), INFRASIM_PORT=str(port))
        result = subprocess.run(
            [sys.executable, "-m", "infrasim_site.stack"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
    assert result.returncode == 2
    assert f"INFRASIM_PORT: 127.0.0.1:{port} is already in use" in result.stderr
    assert "redis" not in result.stdout + result.stderr
