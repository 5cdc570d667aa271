#!/usr/bin/env python
"""Benchmark: the mesh gateway, from database to a real WireGuard interface.

Run as root from the project root:  .venv/bin/python bench/mesh_gateway_sync.py
(--quick for a fast smoke run; --help for the knobs).

What it measures, each against a floor measured in the same run:

1. Per network size (default 100, 1,000 and 10,000 active peers, bulk-created
   with real x25519 public keys; a --psk-fraction of them carry a sealed
   preshared key, as peers created with preshared_key=True do):
   - render_ms: `mesh.services.render_gateway_config(network)`, i.e. the
     query, unsealing the gateway key and every preshared key, and the
     formatting in mesh.wgconf. Floor: a plain f-string loop over the same
     (key, psk, ipv4, ipv6) tuples held in memory (no database, no sealing).
   - syncconf_ms: applying that config with `mesh.gateway.apply` (temp file +
     `wg syncconf`) to a wireguard-go interface that is EMPTY before each timed
     run (an untimed `wg syncconf` of a config without peers resets it), so
     the figure is the cost of installing all N peers, not a no-op diff.
     Floor: `wg syncconf` of the floor's config file, written beforehand.
   - noop_ms (informational): the same apply once more on the now-full
     interface; this is what every periodic resync and every single-peer
     change costs on a network of that size.
   - policy_ms (informational): rendering the isolation policy
     (`mesh.services.render_gateway_policy`; the peers belong to 20 owners) and
     `nft_ms` applying it with `mesh.gateway.apply_policy` (`nft -f` inside
     the gateway's namespace), which every sync does after `wg syncconf`.
   Figures are medians of --repeat runs; ours and floor alternate in order.

2. Propagation (--changes, default 50): from calling the service
   (`services.peer_create`, alternating with `services.peer_revoke` of that
   peer) to `wg` on the gateway showing the change. The real path: commit,
   on_commit enqueue on Redis, a `celery -A infrasim_site worker` subprocess
   (prefork, as in the Procfile, minus beat) runs mesh.tasks.sync_gateway,
   which renders the whole network and `wg syncconf`s it. The network holds
   --background-peers active peers besides the changing one. Detection polls
   the interface every --poll-ms through its UAPI socket (the `get=1` request
   `wg show <if> peers` makes, without spawning a process; --poll wg spawns
   `wg show` instead). Reference: a direct `wg set <if> peer K allowed-ips ...`
   (then `... remove`) on the same interface, timed from just before the
   command to the same poller seeing it.

Everything runs in a temporary INFRASIM_VAR_DIR (SQLite database, master key,
secret key) and a network namespace made for the run; the namespace,
wireguard-go, its UAPI socket, the Celery worker and a private redis-server
(started only when REDIS_URL does not answer) are removed at the end, also
on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infrasim_site.localredis import redis_answers, start_private_redis  # noqa: E402  (needs ROOT on the path)
TARGET_RENDER_SIZE = 10_000
TARGET_RENDER_S = 1.0
TARGET_PROPAGATION_P95_S = 1.0


# --- small helpers ------------------------------------------------------------------


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def p95(samples: list[float]) -> float:
    if len(samples) < 2:
        return samples[0]
    return statistics.quantiles(samples, n=20, method="inclusive")[18]


def stop_process(process: subprocess.Popen, *, group: bool = False, timeout: float = 10) -> None:
    """Stop a child we started (by its pid, or its own process group)."""
    if process.poll() is not None:
        return
    try:
        if group:
            os.killpg(process.pid, signal.SIGTERM)
        else:
            process.terminate()
        process.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
        process.wait(timeout=5)


# --- the gateway: wireguard-go in a namespace of its own ----------------------------------


class Gateway:
    """A wireguard-go interface inside a fresh network namespace. Its UAPI
    socket lives in /var/run/wireguard, which `ip netns exec` does not hide,
    so `wg <cmd> <ifname>` works from the root namespace."""

    def __init__(self, ifname: str, netns: str):
        from mesh.wireguard_go import WireGuardGo

        self.ifname, self.netns = ifname, netns
        self.wireguard_go = WireGuardGo(ifname, netns=netns)
        self.sock = self.wireguard_go.socket
        self.netns_made = False

    def start(self) -> None:
        subprocess.run(["ip", "netns", "add", self.netns], check=True, capture_output=True)
        self.netns_made = True
        self.wireguard_go.start()
        subprocess.run(["wg", "show", self.ifname], check=True, capture_output=True)

    def stop(self) -> None:
        self.wireguard_go.stop()
        if self.netns_made:
            subprocess.run(["ip", "netns", "del", self.netns], check=False, capture_output=True)

    def uapi_get(self) -> bytes:
        """The interface state, as `wg show` reads it (UAPI `get=1`)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(str(self.sock))
            conn.sendall(b"get=1\n\n")
            chunks = []
            while True:
                chunk = conn.recv(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
                if chunk.endswith(b"\n\n"):
                    break
        return b"".join(chunks)

    def peer_count(self) -> int:
        return self.uapi_get().count(b"\npublic_key=")

    def syncconf(self, path: str) -> None:
        subprocess.run(["wg", "syncconf", self.ifname, path], check=True, capture_output=True)


def make_poller(gateway: Gateway, mode: str):
    """has_peer(public_key) -> bool, by UAPI or by spawning `wg show <if> peers`."""
    if mode == "uapi":

        def has_peer(public_key: str) -> bool:
            needle = b"\npublic_key=" + base64.b64decode(public_key).hex().encode() + b"\n"
            return needle in gateway.uapi_get()

    else:

        def has_peer(public_key: str) -> bool:
            out = subprocess.run(["wg", "show", gateway.ifname, "peers"], capture_output=True, text=True, check=True)
            return public_key in out.stdout.split()

    return has_peer


def wait_for(has_peer, public_key: str, present: bool, poll_s: float, timeout: float) -> float | None:
    """Poll until the key's presence is `present`; returns perf_counter at detection."""
    deadline = time.perf_counter() + timeout
    while True:
        if has_peer(public_key) == present:
            return time.perf_counter()
        if time.perf_counter() > deadline:
            return None
        time.sleep(poll_s)


# --- data ------------------------------------------------------------------------------


def floor_render(private_key: str, listen_port: int, rows) -> str:
    """The reference: a plain f-string loop over in-memory tuples."""
    out = [f"[Interface]\nPrivateKey = {private_key}\nListenPort = {listen_port}\n"]
    for key, psk, v4, v6 in rows:
        if psk:
            out.append(f"\n[Peer]\nPublicKey = {key}\nPresharedKey = {psk}\nAllowedIPs = {v4}/32, {v6}/128\n")
        else:
            out.append(f"\n[Peer]\nPublicKey = {key}\nAllowedIPs = {v4}/32, {v6}/128\n")
    return "".join(out)


def bulk_peers(network, owners, n: int, psk_fraction: float, *, first_host: int = 2):
    """Create n active peers (and their v4/v6 leases) directly; return the
    in-memory (public_key, psk, ipv4, ipv6) tuples in creation order."""
    from infrasim_site.sealing import seal
    from mesh import keys
    from mesh.models import AddressLease, Peer

    v4net = ipaddress.ip_network(network.ipv4_cidr)
    v6net = ipaddress.ip_network(network.ipv6_prefix)
    rows, peers = [], []
    psk_every = round(1 / psk_fraction) if psk_fraction > 0 else 0
    for i in range(n):
        public = keys.generate_keypair()[1]
        psk = keys.generate_preshared_key() if psk_every and i % psk_every == 0 else None
        v4 = str(v4net.network_address + first_host + i)
        v6 = str(v6net.network_address + first_host + i)
        rows.append((public, psk, v4, v6))
        peers.append(
            Peer(
                network=network, owner=owners[i % len(owners)], name=f"peer-{network.pk}-{i}", public_key=public,
                preshared_key_sealed=seal(psk.encode()) if psk else "", ipv4=v4, ipv6=v6,
                allowed_ips=[network.ipv4_cidr, network.ipv6_prefix], keepalive=25,
            )
        )
    peers = Peer.objects.bulk_create(peers, batch_size=500)
    leases = []
    for peer in peers:
        leases.append(AddressLease(network=network, address=peer.ipv4, peer=peer))
        leases.append(AddressLease(network=network, address=peer.ipv6, peer=peer))
    AddressLease.objects.bulk_create(leases, batch_size=500)
    return rows


def same_config(a: str, b: str) -> bool:
    """Equal up to the order of [Peer] sections."""
    return sorted(a.split("\n\n")) == sorted(b.split("\n\n"))


# --- part 1: rendering and syncconf ----------------------------------------------------


def bench_size(index: int, n: int, args, gateway: Gateway, owners, workdir: str) -> dict:
    from infrasim_site.sealing import seal, unseal
    from mesh import gateway as mesh_gateway
    from mesh import keys, services, wgconf
    from mesh.models import MeshNetwork, Peer

    private, public = keys.generate_keypair()
    # Created directly (not with services.network_create) so that no sync task is queued for it.
    network = MeshNetwork.objects.create(
        name=f"bench-render-{index}", ipv4_cidr=f"10.{index}.0.0/16", ipv6_prefix=f"fd42:1f5a:7d{index:02x}::/64",
        endpoint="127.0.0.1:51820", listen_port=51820, interface=gateway.ifname, gateway_queue="bench-unused",
        gateway_public_key=public, gateway_private_key_sealed=seal(private.encode()),
    )
    t = time.perf_counter()
    rows = bulk_peers(network, owners, n, args.psk_fraction)
    build_s = time.perf_counter() - t
    network = MeshNetwork.objects.get(pk=network.pk)  # as gateway_sync loads it

    ours_cfg = services.render_gateway_config(network)  # warm-up, and the config we apply
    floor_cfg = floor_render(private, network.listen_port, rows)
    if not same_config(ours_cfg, floor_cfg):
        raise RuntimeError(f"n={n}: render_gateway_config and the floor disagree")

    render, floor, q_t, u_t, f_t = [], [], [], [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        services.render_gateway_config(network)
        render.append(time.perf_counter() - t)
        t = time.perf_counter()
        floor_render(private, network.listen_port, rows)
        floor.append(time.perf_counter() - t)
        # Diagnostic breakdown of ours: query / unseal / format.
        t = time.perf_counter()
        fetched = list(
            Peer.objects.filter(network=network, status=Peer.Status.ACTIVE).values_list(
                "public_key", "preshared_key_sealed", "ipv4", "ipv6"
            )
        )
        t1 = time.perf_counter()
        key = unseal(network.gateway_private_key_sealed).decode()
        plain = [wgconf.GatewayPeer(k, unseal(p).decode() if p else None, v4, v6) for k, p, v4, v6 in fetched]
        t2 = time.perf_counter()
        wgconf.gateway_config(private_key=key, listen_port=network.listen_port, peers=plain)
        t3 = time.perf_counter()
        q_t.append(t1 - t)
        u_t.append(t2 - t1)
        f_t.append(t3 - t2)

    empty = os.path.join(workdir, "empty.conf")
    Path(empty).write_text(f"[Interface]\nPrivateKey = {private}\nListenPort = {network.listen_port}\n")
    floor_path = os.path.join(workdir, f"floor-{n}.conf")
    Path(floor_path).write_text(floor_cfg)
    os.chmod(floor_path, 0o600)

    def reset():
        gateway.syncconf(empty)
        if gateway.peer_count() != 0:
            raise RuntimeError("the interface did not empty")

    sync_ours, sync_floor, noop = [], [], []
    for r in range(args.repeat):
        order = ("ours", "floor") if r % 2 == 0 else ("floor", "ours")
        for which in order:
            reset()
            t = time.perf_counter()
            if which == "ours":
                mesh_gateway.apply(gateway.ifname, ours_cfg)
                sync_ours.append(time.perf_counter() - t)
            else:
                gateway.syncconf(floor_path)
                sync_floor.append(time.perf_counter() - t)
            if r == 0 and gateway.peer_count() != n:
                raise RuntimeError(f"n={n}: the interface holds {gateway.peer_count()} peers after syncconf")
        t = time.perf_counter()
        mesh_gateway.apply(gateway.ifname, ours_cfg)  # identical config: a no-op diff
        noop.append(time.perf_counter() - t)
    policy_render, nft = [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        ruleset = services.render_gateway_policy(network)
        t1 = time.perf_counter()
        mesh_gateway.apply_policy(ruleset, netns=gateway.netns)
        nft.append(time.perf_counter() - t1)
        policy_render.append(t1 - t)
    reset()
    os.unlink(floor_path)
    return {
        "n": n,
        "build_s": build_s,
        "render_ms": median_ms(render),
        "floor_render_ms": median_ms(floor),
        "query_ms": median_ms(q_t),
        "unseal_ms": median_ms(u_t),
        "format_ms": median_ms(f_t),
        "sync_ours_ms": median_ms(sync_ours),
        "sync_floor_ms": median_ms(sync_floor),
        "noop_ms": median_ms(noop),
        "policy_ms": median_ms(policy_render),
        "nft_ms": median_ms(nft),
    }


# --- part 2: propagation ---------------------------------------------------------------


def start_worker(queue: str, workdir: str, cleanup: contextlib.ExitStack) -> tuple[subprocess.Popen, Path]:
    log_path = Path(workdir) / "worker.log"
    log = open(log_path, "w")  # noqa: SIM115 (closed by the cleanup stack)
    cleanup.callback(log.close)
    process = subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "infrasim_site", "worker", "-Q", queue,
            "-n", f"bench-{os.getpid()}@%h", "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
        ],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the prefork children go with it
    )
    cleanup.callback(stop_process, process, group=True, timeout=20)
    return process, log_path


def bench_burst(args, gateway: Gateway, network, has_peer, poll_s: float) -> list[dict]:
    """--burst changes back to back (each its own transaction and sync task),
    then the time until the gateway holds exactly what the database says.
    Syncs of a burst run concurrently on the worker's processes; a gateway
    that never converges (within --timeout) means an older sync overwrote a
    newer one. No beat runs here, so nothing repairs it later."""
    from identity.models import User
    from mesh import keys, services
    from mesh.models import Peer

    user = User.objects.create_user(display_name="bench burst")
    publics = [keys.generate_keypair()[1] for _ in range(args.burst)]
    outcomes = []
    for phase in ("create", "revoke"):
        t0 = time.perf_counter()
        if phase == "create":
            ids = [
                services.peer_create(actor=user, name=f"burst-{i}", public_key=k, network=network).peer.pk
                for i, k in enumerate(publics)
            ]
        else:
            for pk in ids:
                services.peer_revoke(actor=user, peer_id=pk)
        t1 = time.perf_counter()
        want = phase == "create"
        deadline = t1 + args.timeout
        while True:
            state = gateway.uapi_get()
            on = [k for k in publics if b"\npublic_key=" + base64.b64decode(k).hex().encode() + b"\n" in state]
            if len(on) == (len(publics) if want else 0):
                seen = time.perf_counter()
                break
            if time.perf_counter() > deadline:
                seen = None
                break
            time.sleep(poll_s)
        # Let every queued sync finish, then look again: a sync of an older
        # generation that lands last would leave the gateway stale.
        drain_deadline = time.perf_counter() + args.timeout
        while True:
            network.refresh_from_db()
            if network.applied_generation >= network.generation or time.perf_counter() > drain_deadline:
                break
            time.sleep(0.01)
        drained = time.perf_counter() - t0 if network.applied_generation >= network.generation else None
        time.sleep(0.2)  # a task may still be between `wg syncconf` and recording its generation
        state = gateway.uapi_get()
        on = [k for k in publics if b"\npublic_key=" + base64.b64decode(k).hex().encode() + b"\n" in state]
        active = set(Peer.objects.filter(network=network, status=Peer.Status.ACTIVE).values_list("public_key", flat=True))
        outcomes.append({
            "drained_s": drained,
            "wrong_after_drain": len(publics) - len(on) if want else len(on),
            "phase": phase,
            "submit_s": t1 - t0,
            "converged_s": None if seen is None else seen - t0,
            "wrong": len(publics) - len(on) if want else len(on),
            "db_agrees": all((k in active) == want for k in publics),
        })
    return outcomes


def bench_propagation(args, gateway: Gateway, owners, queue: str, workdir: str, cleanup) -> dict:
    from identity.models import User
    from mesh import keys, services

    network = services.network_create(
        actor=None, name="bench-propagation", ipv4_cidr="100.96.0.0/16", ipv6_prefix="fd42:1f5a:7c00::/64",
        interface=gateway.ifname, gateway_netns=gateway.netns, gateway_queue=queue,
    )  # queues the first sync, which waits for the worker
    bulk_peers(network, owners, args.background_peers, args.psk_fraction, first_host=1000)
    empty = os.path.join(workdir, "empty.conf")
    Path(empty).write_text("[Interface]\n")
    gateway.syncconf(empty)

    worker, log_path = start_worker(queue, workdir, cleanup)
    deadline = time.monotonic() + 60
    while True:
        network.refresh_from_db()
        if network.applied_generation >= network.generation and gateway.peer_count() == args.background_peers:
            break
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not apply the first sync; its log:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.1)

    user = User.objects.create_user(display_name="bench propagation")
    has_peer = make_poller(gateway, args.poll)
    poll_s = args.poll_ms / 1000
    gap_s = args.gap_ms / 1000

    prop, service, kinds = [], [], []
    public, peer_id = None, None
    for i in range(args.changes):
        create = i % 2 == 0
        if create:
            public = keys.generate_keypair()[1]
        t0 = time.perf_counter()
        if create:
            peer_id = services.peer_create(actor=user, name=f"bench-{i}", public_key=public, network=network).peer.pk
        else:
            services.peer_revoke(actor=user, peer_id=peer_id)
        t1 = time.perf_counter()
        seen = wait_for(has_peer, public, create, poll_s, args.timeout)
        if seen is None:
            raise RuntimeError(
                f"change {i} ({'create' if create else 'revoke'}) not on the gateway after {args.timeout} s; "
                f"worker log:\n{log_path.read_text()[-3000:]}"
            )
        prop.append(seen - t0)
        service.append(t1 - t0)
        kinds.append("create" if create else "revoke")
        time.sleep(gap_s)

    # Reference: the raw primitive on the same interface, same poller.
    v4net = ipaddress.ip_network(network.ipv4_cidr)
    v6net = ipaddress.ip_network(network.ipv6_prefix)
    ref = []
    for i in range(args.changes):
        add = i % 2 == 0
        if add:
            public = keys.generate_keypair()[1]
            host = 60000 + i
            allowed = f"{v4net.network_address + host}/32,{v6net.network_address + host}/128"
            command = ["wg", "set", gateway.ifname, "peer", public, "allowed-ips", allowed]
        else:
            command = ["wg", "set", gateway.ifname, "peer", public, "remove"]
        t0 = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        seen = wait_for(has_peer, public, add, poll_s, args.timeout)
        if seen is None:
            raise RuntimeError(f"`{' '.join(command[:4])} ...` not visible after {args.timeout} s")
        ref.append(seen - t0)
        time.sleep(gap_s)

    burst = bench_burst(args, gateway, network, has_peer, poll_s) if args.burst else None

    network.refresh_from_db()
    return {
        "burst": burst,
        "prop": prop,
        "service": service,
        "kinds": kinds,
        "ref": ref,
        "generation": network.generation,
        "applied_generation": network.applied_generation,
        "last_sync_error": network.last_sync_error,
    }


# --- main ---------------------------------------------------------------------------------


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000", help="peer counts to render and apply (default 100,1000,10000)")
    parser.add_argument("--changes", type=int, default=50, help="API changes for the propagation figures (default 50)")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per figure in part 1; medians reported (default 7)")
    parser.add_argument("--background-peers", type=int, default=1000,
                        help="other active peers in the propagation network (default 1000)")
    parser.add_argument("--psk-fraction", type=float, default=0.5,
                        help="share of peers with a (sealed) preshared key (default 0.5)")
    parser.add_argument("--poll", choices=("uapi", "wg"), default="uapi",
                        help="detect changes through the UAPI socket (default) or by spawning `wg show <if> peers`")
    parser.add_argument("--poll-ms", type=float, default=2.0, help="poll interval (default 2)")
    parser.add_argument("--gap-ms", type=float, default=50.0, help="pause between changes (default 50)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for one change (default 30)")
    parser.add_argument("--burst", type=int, default=10,
                        help="peers created, then revoked, back to back to check convergence (default 10; 0 skips; max 20)")
    parser.add_argument("--skip-propagation", action="store_true", help="part 1 only")
    parser.add_argument("--quick", action="store_true", help="sizes 100,1000, 10 changes, 5 repeats, 100 background peers")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.changes, args.repeat, args.background_peers = "100,1000", 10, 5, 100
    args.sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    if args.changes < 2 or args.changes % 2:
        parser.error("--changes must be an even number >= 2 (creates alternate with revokes)")
    if not 0 <= args.burst <= 20:
        parser.error("--burst is 0..20 (the per-user peer quota)")
    if args.repeat < 1 or not 0 <= args.psk_fraction <= 1:
        parser.error("--repeat >= 1 and 0 <= --psk-fraction <= 1")
    if any(not 1 <= n <= 60000 for n in args.sizes) or len(args.sizes) > 200:
        parser.error("sizes must be 1..60000")
    return args


def preflight() -> None:
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark creates a network namespace and a WireGuard interface")
    for tool in ("wg", "wireguard-go", "ip"):
        if shutil.which(tool) is None:
            raise SystemExit(f"`{tool}` is not installed (Debian: wireguard-tools, wireguard-go, iproute2)")


def main() -> int:
    args = parse_args()
    preflight()
    # SIGTERM unwinds like Ctrl-C, so the cleanup below runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    pid = os.getpid()
    ifname = f"isbench{pid}"[:15]
    netns = f"infrasim-bench-{pid}"
    queue = f"bench-mesh-{pid}"

    with contextlib.ExitStack() as cleanup:
        workdir = tempfile.mkdtemp(prefix="infrasim-bench-")
        cleanup.callback(shutil.rmtree, workdir, True)

        # Settings come from the environment: a throwaway var dir and SQLite database.
        os.environ["INFRASIM_VAR_DIR"] = workdir
        for name in ("DATABASE_URL", "INFRASIM_MASTER_KEY", "INFRASIM_MASTER_KEY_FILE", "SECRET_KEY", "STATIC_ROOT"):
            os.environ.pop(name, None)
        os.environ["DEBUG"] = "false"  # DEBUG would log every query
        os.environ["LOG_LEVEL"] = "WARNING"
        os.environ["WG_GATEWAY_INTERFACE"] = ifname
        os.environ["WG_GATEWAY_QUEUE"] = queue
        os.environ["DJANGO_SETTINGS_MODULE"] = "infrasim_site.settings"
        redis_url = os.environ.get("REDIS_URL", "")
        redis_note = "REDIS_URL"
        if args.skip_propagation:
            redis_url = redis_url or "redis://127.0.0.1:6379/0"
        elif not redis_url or not redis_answers(redis_url):
            redis_url, redis_process = start_private_redis(workdir)
            cleanup.callback(stop_process, redis_process)
            redis_note = "private redis-server"
        os.environ["REDIS_URL"] = redis_url

        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)

        from identity.models import User

        gateway = Gateway(ifname, netns)
        cleanup.callback(gateway.stop)
        from mesh.gateway import lock_path

        cleanup.callback(Path(lock_path(ifname)).unlink, missing_ok=True)
        gateway.start()
        wgo = subprocess.run(["wireguard-go", "--version"], check=False, capture_output=True, text=True).stdout.strip().split("\n")[0]
        print(f"# mesh gateway benchmark: interface {ifname} in netns {netns} ({wgo or 'wireguard-go'}), "
              f"SQLite under {workdir}, psk fraction {args.psk_fraction}, {os.cpu_count()} CPUs")

        owners = [User.objects.create_user(display_name=f"bench owner {i}") for i in range(20)]
        results = []
        print(f"\n## render + apply (medians of {args.repeat}; syncconf onto an emptied interface)")
        header = (f"{'peers':>7} {'render_ms':>10} {'floor_render_ms':>15} {'ratio':>6} {'syncconf_ms':>12} "
                  f"{'floor_syncconf_ms':>17} {'ratio':>6} {'noop_ms':>8} {'policy_ms':>9} {'nft_ms':>7} | "
                  f"{'query':>7} {'unseal':>7} {'format':>7}")
        print(header)
        for index, n in enumerate(args.sizes, start=1):
            r = bench_size(index, n, args, gateway, owners, workdir)
            results.append(r)
            print(f"{n:>7} {r['render_ms']:>10.2f} {r['floor_render_ms']:>15.2f} "
                  f"{r['render_ms'] / r['floor_render_ms']:>6.1f} {r['sync_ours_ms']:>12.1f} "
                  f"{r['sync_floor_ms']:>17.1f} {r['sync_ours_ms'] / r['sync_floor_ms']:>6.2f} {r['noop_ms']:>8.1f} "
                  f"{r['policy_ms']:>9.1f} {r['nft_ms']:>7.1f} | "
                  f"{r['query_ms']:>7.2f} {r['unseal_ms']:>7.2f} {r['format_ms']:>7.2f}", flush=True)
        print("  (query/unseal/format: a breakdown of render_ms, timed separately with the same ORM query)")

        prop = None
        if not args.skip_propagation:
            print(f"\n## propagation: {args.changes} changes (peer_create / peer_revoke alternating), "
                  f"{args.background_peers} other peers, Redis: {redis_note}, poll {args.poll} every {args.poll_ms:g} ms")
            prop = bench_propagation(args, gateway, owners, queue, workdir, cleanup)
            p, ref = prop["prop"], prop["ref"]
            creates = [x for x, k in zip(p, prop["kinds"]) if k == "create"]
            revokes = [x for x, k in zip(p, prop["kinds"]) if k == "revoke"]
            print(f"propagation_ms   p50 {median_ms(p):8.1f}   p95 {p95(p) * 1000:8.1f}   max {max(p) * 1000:8.1f}")
            print(f"  create         p50 {median_ms(creates):8.1f}   revoke p50 {median_ms(revokes):8.1f}")
            svc_c = [x for x, k in zip(prop["service"], prop["kinds"]) if k == "create"]
            svc_r = [x for x, k in zip(prop["service"], prop["kinds"]) if k == "revoke"]
            print(f"  service call   p50 {median_ms(prop['service']):8.1f}   create p50 {median_ms(svc_c):8.1f}   "
                  f"revoke p50 {median_ms(svc_r):8.1f}   (the call itself: checks, IPAM, commit, enqueue)")
            print(f"wg_set_ms        p50 {median_ms(ref):8.1f}   p95 {p95(ref) * 1000:8.1f}   max {max(ref) * 1000:8.1f}")
            for b in prop["burst"] or ():
                if b["converged_s"] is not None:
                    outcome = f"gateway right after {b['converged_s'] * 1000:8.1f} ms"
                else:
                    outcome = f"NOT CONVERGED after {args.timeout:g} s: {b['wrong']} of {args.burst} peers wrong on the gateway"
                drained = "generation not recorded" if b["drained_s"] is None else f"generation recorded after {b['drained_s'] * 1000:.0f} ms"
                after = "gateway still right" if not b["wrong_after_drain"] else (
                    f"STALE: {b['wrong_after_drain']} of {args.burst} peers wrong on the gateway")
                print(f"burst of {args.burst} {b['phase']}s back to back (submitted in {b['submit_s'] * 1000:.0f} ms): "
                      f"{outcome}; {drained}; {after}")
            print(f"  network generation {prop['generation']}, applied {prop['applied_generation']}"
                  + (f", last sync error: {prop['last_sync_error']}" if prop["last_sync_error"] else ""))

        print("\n## targets")
        big = next((r for r in results if r["n"] == TARGET_RENDER_SIZE), None)
        if big is None:
            print(f"render {TARGET_RENDER_SIZE} peers < {TARGET_RENDER_S:g} s: not measured (size not in --sizes)")
        else:
            verdict = "PASS" if big["render_ms"] / 1000 < TARGET_RENDER_S else "FAIL"
            print(f"render {TARGET_RENDER_SIZE} peers < {TARGET_RENDER_S:g} s: {big['render_ms']:.1f} ms  {verdict}")
        if prop is None:
            print(f"propagation p95 < {TARGET_PROPAGATION_P95_S:g} s: not measured")
        else:
            value = p95(prop["prop"])
            verdict = "PASS" if value < TARGET_PROPAGATION_P95_S else "FAIL"
            print(f"propagation p95 < {TARGET_PROPAGATION_P95_S:g} s: {value * 1000:.1f} ms  {verdict}")

        print("\n## ratios")
        for r in results:
            print(f"render/fstring-floor[{r['n']}] = {r['render_ms'] / r['floor_render_ms']:.2f}")
            print(f"syncconf(ours)/syncconf(floor)[{r['n']}] = {r['sync_ours_ms'] / r['sync_floor_ms']:.2f}")
        if prop is not None:
            print(f"propagation-p95/wg-set-p95 = {p95(prop['prop']) / p95(prop['ref']):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
