"""Real provisioning servers on loopback, started once per test session (the
fixtures are registered in tests/conftest.py):
Knot DNS with a TSIG-protected test zone, Synapse on SQLite with a
shared-secret admin, and moto's standalone S3 server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest

from tests.bootstrap import free_port

ZONE = "test.infrasim"


def wait_until(check, *, timeout: float, what: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:
            pass
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up in {timeout} s")
        time.sleep(0.2)


@dataclass
class KnotServer:
    directory: Path
    port: int
    key_name: str
    secret: str
    process: subprocess.Popen | None = None

    def conf(self) -> Path:
        return self.directory / "knot.conf"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["knotd", "-c", str(self.conf())], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(lambda: self.query(ZONE, "SOA"), timeout=20, what="knotd", process=self.process)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def query(self, name: str, rdtype: str) -> list[str]:
        response = dns.query.tcp(dns.message.make_query(name, rdtype), "127.0.0.1", port=self.port, timeout=2)
        return sorted(rd.to_text() for rrset in response.answer for rd in rrset if rrset.rdtype == dns.rdatatype.from_text(rdtype))

    def settings(self) -> dict:
        return {
            "BASE_DOMAIN": ZONE,
            "DNS_SERVER": "127.0.0.1",
            "DNS_PORT": self.port,
            "DNS_ZONE": ZONE,
            "DNS_TSIG_KEY_NAME": self.key_name,
            "DNS_TSIG_ALGORITHM": "hmac-sha256",
            "DNS_TSIG_SECRET": self.secret,
            "DNS_TARGET_A": ["192.0.2.10"],
            "DNS_TARGET_AAAA": ["2001:db8::10"],
            "DNS_TARGET_CNAME": "",
        }


@pytest.fixture(scope="session")
def knot():
    if shutil.which("knotd") is None:
        raise RuntimeError("knotd is not installed; `make test` installs Debian's knot package")
    directory = Path(tempfile.mkdtemp(prefix="infrasim-knot-"))
    server = KnotServer(directory, free_port(), "infrasim-test", base64.b64encode(secrets.token_bytes(32)).decode())
    (directory / f"{ZONE}.zone").write_text(
        f"$ORIGIN {ZONE}.\n$TTL 300\n"
        f"@ SOA ns1.{ZONE}. hostmaster.{ZONE}. 1 3600 600 86400 300\n"
        f"@ NS ns1.{ZONE}.\nns1 A 127.0.0.1\n"
        "squatted A 198.51.100.7\n"
    )
    server.conf().write_text(
        f"""server:
    listen: 127.0.0.1@{server.port}
    rundir: {directory}
database:
    storage: {directory}
control:
    listen: {directory}/knot.sock
log:
  - target: {directory}/knot.log
    any: info
key:
  - id: {server.key_name}
    algorithm: hmac-sha256
    secret: {server.secret}
acl:
  - id: infrasim-update
    key: {server.key_name}
    action: update
zone:
  - domain: {ZONE}
    file: {directory}/{ZONE}.zone
    acl: infrasim-update
    zonefile-load: difference-no-serial
    journal-content: all
"""
    )
    server.start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@dataclass
class SynapseServer:
    directory: Path
    port: int
    server_name: str
    admin_token: str = ""
    process: subprocess.Popen | None = None
    shared_secret: str = field(default_factory=lambda: secrets.token_hex(16))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "synapse.app.homeserver", "-c", str(self.directory / "homeserver.yaml")],
            cwd=self.directory,
            stdout=open(self.directory / "stdout.log", "ab"),
            stderr=subprocess.STDOUT,
        )
        wait_until(
            lambda: urllib.request.urlopen(f"{self.url}/health", timeout=2).status == 200,
            timeout=120,
            what="synapse",
            process=self.process,
        )

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def request(self, method: str, path: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def register_with_shared_secret(self, username: str, *, admin: bool) -> str:
        _, nonce = self.request("GET", "/_synapse/admin/v1/register")
        password = secrets.token_hex(12)
        mac = hmac.new(self.shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(b"\x00".join([nonce["nonce"].encode(), username.encode(), password.encode(), b"admin" if admin else b"notadmin"]))
        status, body = self.request(
            "POST",
            "/_synapse/admin/v1/register",
            {"nonce": nonce["nonce"], "username": username, "password": password, "admin": admin, "mac": mac.hexdigest()},
        )
        assert status == 200, body
        return body["access_token"]

    def user(self, mxid: str) -> tuple[int, dict]:
        return self.request("GET", f"/_synapse/admin/v2/users/{urllib.parse.quote(mxid)}", token=self.admin_token)

    def settings(self) -> dict:
        return {"MATRIX_DOMAIN": self.server_name, "MATRIX_HOMESERVER_URL": self.url, "MATRIX_ADMIN_TOKEN": self.admin_token}


@pytest.fixture(scope="session")
def synapse():
    import yaml

    directory = Path(tempfile.mkdtemp(prefix="infrasim-synapse-"))
    server = SynapseServer(directory, free_port(), "matrix.test.infrasim")
    config_path = directory / "homeserver.yaml"
    subprocess.run(
        [sys.executable, "-m", "synapse.app.homeserver", "--server-name", server.server_name,
         "--config-path", str(config_path), "--data-directory", str(directory),
         "--generate-config", "--report-stats=no"],
        cwd=directory, check=True, capture_output=True,
    )
    config = yaml.safe_load(config_path.read_text())
    config["listeners"] = [
        {"port": server.port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
         "x_forwarded": False, "resources": [{"names": ["client"], "compress": False}]}
    ]
    config["database"] = {"name": "sqlite3", "args": {"database": str(directory / "homeserver.db")}}
    config["registration_shared_secret"] = server.shared_secret
    config["enable_registration"] = False
    config["suppress_key_server_warning"] = True
    config["trusted_key_servers"] = []
    config["federation_domain_whitelist"] = []
    config["log_config"] = None
    config.pop("log_config")
    config["rc_login"] = {"address": {"per_second": 1000, "burst_count": 1000}, "account": {"per_second": 1000, "burst_count": 1000}}
    config["rc_message"] = {"per_second": 1000, "burst_count": 1000}
    config_path.write_text(yaml.safe_dump(config))
    server.start()
    server.admin_token = server.register_with_shared_secret("infrasim-admin", admin=True)
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@dataclass
class S3Server:
    port: int
    access_key: str = "infrasim-test"
    secret_key: str = "infrasim-test-secret"
    server: object = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, account_id: str | None = None):
        import boto3

        client = boto3.client(
            "s3", endpoint_url=self.url, region_name="us-east-1",
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
        )
        if account_id:
            # moto keeps separate S3 accounts apart by this header.
            client.meta.events.register(
                "before-send.s3.*", lambda request, **_: request.headers.__setitem__("x-moto-account-id", account_id)
            )
        return client

    def settings(self) -> dict:
        return {
            "S3_ENDPOINT_URL": self.url, "S3_REGION": "us-east-1",
            "S3_ACCESS_KEY_ID": self.access_key, "S3_SECRET_ACCESS_KEY": self.secret_key,
        }


@pytest.fixture(scope="session")
def s3():
    from moto.server import ThreadedMotoServer

    server = S3Server(free_port())
    server.server = ThreadedMotoServer(ip_address="127.0.0.1", port=server.port, verbose=False)
    server.server.start()
    yield server
    server.server.stop()
