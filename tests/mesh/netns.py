"""Real WireGuard topologies in network namespaces, for the mesh tests.

    underlay namespace: bridge br0 (198.18.0.0/24)
        |-- veth -- gateway namespace: u0 198.18.0.1, wireguard-go interface
        |           (the mesh's gateway, configured by InfraSim's `wg syncconf`)
        |-- veth -- peer namespace 1: u0 198.18.0.11, wireguard-go brought up
        |           from a downloaded wg-quick file
        `-- ...

Nothing touches the root namespace except the UAPI sockets of wireguard-go,
which live in /var/run/wireguard/<ifname>.sock for every namespace. The mesh
network names the gateway namespace (MeshNetwork.gateway_netns), so
InfraSim's gateway sync runs `wg` and `nft` inside it. Every interface gets
a name unique to this run, and every object is removed again, also when a
test fails.

Names: namespaces are `isim-<pid>-<token>-<role>`, so a later run can tell
that a namespace was left by a run that no longer exists and remove it;
interfaces are `wg<token><role>` (at most 15 characters).
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from mesh.wireguard_go import UAPI_DIR as WG_RUN_DIR
from mesh.wireguard_go import WireGuardGo as WireGuardGoProcess
from mesh.wireguard_go import socket_listening

NETNS_DIR = Path("/var/run/netns")
NS_PREFIX = "isim-"
UNDERLAY = ipaddress.ip_network("198.18.0.0/24")  # RFC 2544 benchmarking space, only inside our namespaces
GATEWAY_UNDERLAY = UNDERLAY.network_address + 1
LISTEN_PORT = 51820


class CommandFailed(RuntimeError):
    pass


def run(*args: str, check: bool = True, input: str | None = None, timeout: float = 15) -> subprocess.CompletedProcess:
    result = subprocess.run(list(args), check=False, capture_output=True, text=True, input=input, timeout=timeout)
    if check and result.returncode != 0:
        raise CommandFailed(f"{' '.join(args)} -> {result.returncode}: {result.stderr.strip() or result.stdout.strip()}")
    return result


def tools_missing() -> list[str]:
    return [tool for tool in ("ip", "wg", "wg-quick", "wireguard-go", "ping", "nft") if shutil.which(tool) is None]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill(pids: list[str]) -> None:
    """SIGKILL and wait until each is gone, or a zombie whose other threads
    are gone too (only then are its files, e.g. its UAPI socket, closed)."""
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    deadline = time.monotonic() + 5
    for pid in pids:
        status = Path(f"/proc/{pid}/status")
        while time.monotonic() < deadline:
            try:
                if "\nState:\tZ" in status.read_text() and len(os.listdir(f"/proc/{pid}/task")) <= 1:
                    break
            except OSError:
                break
            time.sleep(0.02)


OUR_IFNAME = r"wg[0-9a-f]{5}(?:g|p\d+)"


def sweep_stale() -> None:
    """Remove what runs that died without cleaning up left behind: our
    namespaces whose creating process is gone (and the wireguard-go processes
    inside them, which hold the namespace open), their scratch directories,
    and UAPI sockets and sync lock files named like ours that nobody listens
    on any more."""
    from mesh.gateway import lock_path

    if NETNS_DIR.is_dir():
        for entry in NETNS_DIR.iterdir():
            match = re.fullmatch(rf"{NS_PREFIX}(\d+)-[0-9a-f]+-\w+", entry.name)
            if match and not _pid_alive(int(match.group(1))):
                _kill(run("ip", "netns", "pids", entry.name, check=False).stdout.split())
                run("ip", "netns", "delete", entry.name, check=False)
    for workdir in Path(tempfile.gettempdir()).glob(f"{NS_PREFIX}*"):
        match = re.match(rf"{NS_PREFIX}(\d+)-", workdir.name)
        if match and workdir.is_dir() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(workdir, ignore_errors=True)
    if WG_RUN_DIR.is_dir():
        for sock in WG_RUN_DIR.glob("wg*.sock"):
            if re.fullmatch(rf"{OUR_IFNAME}\.sock", sock.name) and not socket_listening(sock):
                sock.unlink(missing_ok=True)
    for lock in Path(lock_path("x")).parent.glob("infrasim-wg-wg*.lock"):
        ifname = lock.name.removeprefix("infrasim-wg-").removesuffix(".lock")
        if re.fullmatch(OUR_IFNAME, ifname) and not (WG_RUN_DIR / f"{ifname}.sock").exists():
            lock.unlink(missing_ok=True)


class Namespace:
    def __init__(self, name: str):
        self.name = name
        run("ip", "netns", "add", name)
        self.exec("ip", "link", "set", "lo", "up")

    def exec(self, *args: str, check: bool = True, input: str | None = None, timeout: float = 15):
        return run("ip", "netns", "exec", self.name, *args, check=check, input=input, timeout=timeout)

    def popen(self, *args: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *args], **kwargs)

    def ip(self, *args: str, check: bool = True):
        return run("ip", "-n", self.name, *args, check=check)

    def delete(self) -> None:
        # Anything still running in it would keep it alive.
        _kill(run("ip", "netns", "pids", self.name, check=False).stdout.split())
        run("ip", "netns", "delete", self.name, check=False)


class WireGuardGo:
    """A wireguard-go process owning interface `ifname` inside a namespace."""

    def __init__(self, ns: Namespace, ifname: str, logdir: Path):
        self.ns, self.ifname = ns, ifname
        self.log = open(logdir / f"{ifname}.log", "wb")  # noqa: SIM115 (closed in stop())
        self.process = WireGuardGoProcess(ifname, netns=ns.name, log=self.log)
        try:
            self.process.start()
        except Exception:
            self.log.close()
            raise

    def wg(self, *args: str, check: bool = True, input: str | None = None):
        return self.ns.exec("wg", *args, check=check, input=input)

    def latest_handshakes(self) -> dict[str, int]:
        out = self.wg("show", self.ifname, "latest-handshakes").stdout
        return {key: int(ts) for key, ts in (line.split("\t") for line in out.splitlines() if line.strip())}

    def peers(self) -> list[str]:
        return self.wg("show", self.ifname, "peers").stdout.split()

    def stop(self) -> None:
        self.process.stop()
        self.log.close()


@dataclass
class Node:
    """A namespace on the underlay, with one WireGuard interface once up."""

    topology: Topology
    ns: Namespace
    underlay_ip: ipaddress.IPv4Address
    ifname: str
    wg: WireGuardGo | None = None
    addresses: list[str] = field(default_factory=list)

    def start_wireguard(self) -> WireGuardGo:
        if self.wg is None:
            self.wg = WireGuardGo(self.ns, self.ifname, self.topology.workdir)
        return self.wg

    # --- bringing a peer up from its wg-quick file --------------------------------------

    def bring_up(self, conf: str, private_key: str | None = None) -> None:
        """What a user does with a downloaded .conf: fill in the private key
        if the file says where it goes, let `wg-quick strip` reduce it to
        `wg` format, `wg setconf` it, add the Address values, route the
        AllowedIPs through the interface and set the link up."""
        conf = with_private_key(conf, private_key)
        self.start_wireguard()
        self._setconf(conf)
        interface = parse_sections(conf)[0][1]
        for value in interface.get("Address", []):
            for address in split_list(value):
                if address not in self.addresses:
                    extra = ["nodad"] if ":" in address else []
                    self.ns.ip("address", "add", address, "dev", self.ifname, *extra)
                    self.addresses.append(address)
        self.ns.ip("link", "set", self.ifname, "up")
        for _, peer in parse_sections(conf)[1:]:
            for value in peer.get("AllowedIPs", []):
                for prefix in split_list(value):
                    self.ns.ip("route", "replace", prefix, "dev", self.ifname)

    def reapply(self, conf: str, private_key: str | None = None) -> None:
        """A new config (e.g. after a key rotation) on an interface that is
        already up: `wg syncconf`, like `wg syncconf wg0 <(wg-quick strip wg0)`."""
        self._setconf(with_private_key(conf, private_key), verb="syncconf")

    def _setconf(self, conf: str, verb: str = "setconf") -> None:
        stripped = self.topology.strip(conf, self.ifname)
        path = self.topology.write_secret(f"{self.ifname}.stripped", stripped)
        self.wg.wg(verb, self.ifname, str(path))

    # --- traffic ------------------------------------------------------------------------

    def ping(self, address: str, *, count: int = 3, interval: float = 0.1, wait: float = 1) -> PingResult:
        result = self.ns.exec(
            "ping", "-n", "-D", "-O", "-c", str(count), "-i", str(interval), "-W", str(wait), address,
            check=False, timeout=count * interval + wait + 10,
        )
        return PingResult.parse(result.stdout)

    def ping_until_ok(self, address: str, *, timeout: float = 10) -> float:
        """Ping until one answer comes back; returns how long it took."""
        start = time.monotonic()
        while True:
            if self.ping(address, count=1, wait=1).received:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise AssertionError(f"{self.ns.name}: no answer from {address} within {timeout} s")

    def start_ping(self, address: str, *, interval: float = 0.05, count: int | None = None, wait: float = 1) -> PingRun:
        args = ["ping", "-n", "-D", "-O", "-i", str(interval), "-W", str(wait)]
        if count:
            args += ["-c", str(count)]
        process = self.ns.popen(*args, address, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return PingRun(process, interval)


@dataclass
class PingResult:
    transmitted: int
    received: int
    replies: dict[int, float]  # icmp_seq -> wall-clock time the reply was printed
    unanswered: dict[int, float]  # icmp_seq -> when ping noticed it had no answer yet
    output: str

    @property
    def lost(self) -> int:
        return self.transmitted - self.received

    @classmethod
    def parse(cls, text: str) -> PingResult:
        replies, unanswered = {}, {}
        for line in text.splitlines():
            match = re.match(r"\[(\d+\.\d+)\] .*icmp_seq=(\d+)", line)
            if not match:
                continue
            stamp, seq = float(match.group(1)), int(match.group(2))
            if "no answer yet" in line:
                unanswered.setdefault(seq, stamp)
            elif "bytes from" in line:
                replies[seq] = stamp
        summary = re.search(r"(\d+) packets transmitted, (\d+) received", text)
        transmitted, received = (int(summary.group(1)), int(summary.group(2))) if summary else (0, 0)
        return cls(transmitted, received, replies, unanswered, text)


class PingRun:
    """A ping running in the background (`-D -O`: every reply and every
    missing reply is printed with a wall-clock timestamp)."""

    def __init__(self, process: subprocess.Popen, interval: float):
        self.process, self.interval = process, interval

    def stop(self) -> PingResult:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # ping prints its summary on SIGINT
        try:
            out, _ = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        return PingResult.parse(out)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


# --- wg-quick files ---------------------------------------------------------------------


def with_private_key(conf: str, private_key: str | None) -> str:
    """Put the private key where the downloaded file says it goes."""
    if private_key is None:
        return conf
    replaced, n = re.subn(r"(?m)^#\s*PrivateKey\s*=.*$", f"PrivateKey = {private_key}", conf, count=1)
    if n:
        return replaced
    replaced, n = re.subn(r"(?m)^PrivateKey\s*=.*$", f"PrivateKey = {private_key}", conf, count=1)
    if not n:
        raise ValueError("the config has no place for a private key")
    return replaced


def split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_sections(conf: str) -> list[tuple[str, dict[str, list[str]]]]:
    """[(section, {key: [values]})] of an INI-like wg-quick file, comments dropped."""
    sections: list[tuple[str, dict[str, list[str]]]] = []
    for raw in conf.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            sections.append((line[1:-1], {}))
            continue
        key, sep, value = line.partition("=")
        if not sep or not sections:
            raise ValueError(f"not a wg-quick line: {raw!r}")
        sections[-1][1].setdefault(key.strip(), []).append(value.strip())
    if not sections or sections[0][0] != "Interface":
        raise ValueError("a wg-quick file starts with [Interface]")
    return sections


# --- the whole topology -----------------------------------------------------------------


class Topology:
    """An underlay bridge, a gateway namespace with the mesh's gateway
    interface, and peer namespaces added on demand. Use as a context manager;
    close() removes everything and is safe to call twice."""

    def __init__(self, *, v4_pool: str, v6_pool: str, start_gateway: bool = True):
        self.token = secrets.token_hex(3)[:5]  # 5 hex: wg + token + role(1-2) <= 15 characters
        self.prefix = f"{NS_PREFIX}{os.getpid()}-{self.token}"
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        os.chmod(self.workdir, 0o700)
        self.v4_pool, self.v6_pool = ipaddress.ip_network(v4_pool), ipaddress.ip_network(v6_pool)
        self.namespaces: list[Namespace] = []
        self.nodes: list[Node] = []
        self.closed = False
        try:
            self.underlay = self._namespace("u")
            self.underlay.ip("link", "add", "br0", "type", "bridge")
            self.underlay.ip("link", "set", "br0", "up")
            self.gateway = self._node("g")
            self.gateway_v4 = f"{next(self.v4_pool.hosts())}/{self.v4_pool.prefixlen}"
            self.gateway_v6 = f"{next(self.v6_pool.hosts())}/{self.v6_pool.prefixlen}"
            if not start_gateway:
                return  # the test runs the gateway itself (manage.py rungateway)
            gateway_wg = self.gateway.start_wireguard()
            self.gateway.ns.ip("address", "add", self.gateway_v4, "dev", gateway_wg.ifname)
            self.gateway.ns.ip("address", "add", self.gateway_v6, "dev", gateway_wg.ifname, "nodad")
            self.gateway.ns.ip("link", "set", gateway_wg.ifname, "up")
            self.gateway.ns.exec("sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        except BaseException:
            self.close()
            raise

    @property
    def gateway_interface(self) -> str:
        return self.gateway.ifname

    @property
    def gateway_netns(self) -> str:
        return self.gateway.ns.name

    @property
    def endpoint(self) -> str:
        return f"{GATEWAY_UNDERLAY}:{LISTEN_PORT}"

    def _namespace(self, role: str) -> Namespace:
        ns = Namespace(f"{self.prefix}-{role}")
        self.namespaces.append(ns)
        return ns

    def _node(self, role: str) -> Node:
        index = len(self.nodes)
        ns = self._namespace(role)
        host = f"v{index}"
        self.underlay.ip("link", "add", host, "type", "veth", "peer", "name", "u0", "netns", ns.name)
        self.underlay.ip("link", "set", host, "master", "br0", "up")
        underlay_ip = UNDERLAY.network_address + (1 if role == "g" else 10 + index)
        ns.ip("address", "add", f"{underlay_ip}/{UNDERLAY.prefixlen}", "dev", "u0")
        ns.ip("link", "set", "u0", "up")
        node = Node(self, ns, underlay_ip, f"wg{self.token}{role}")
        self.nodes.append(node)
        return node

    def add_peer(self) -> Node:
        return self._node(f"p{len(self.nodes)}")

    def strip(self, conf: str, ifname: str) -> str:
        """`wg-quick strip`: the wg-quick file reduced to what `wg` reads."""
        path = self.write_secret(f"{ifname}.conf", conf)  # wg-quick takes the name from the file
        return run("wg-quick", "strip", str(path)).stdout

    def write_secret(self, name: str, text: str) -> Path:
        path = self.workdir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        return path

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for node in self.nodes:
            if node.wg is not None:
                node.wg.stop()
        for ns in reversed(self.namespaces):
            ns.delete()
        from mesh.gateway import lock_path

        if hasattr(self, "gateway"):
            Path(lock_path(self.gateway.ifname)).unlink(missing_ok=True)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
