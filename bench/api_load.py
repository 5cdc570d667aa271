#!/usr/bin/env python
"""Benchmark: the API under load, against bare Django on the same server.

Run from the project root:  .venv/bin/python bench/api_load.py
(--quick for a short smoke run; --help for the knobs). Needs `wrk`
(Debian: apt-get install wrk) and `redis-server`.

One run starts two uvicorn servers exactly as the Procfile's `web` line does
(`uvicorn ... --ws websockets-sansio --proxy-headers`, one process each, on
loopback ports):

- ours: `infrasim_site.asgi:application`, our whole stack (Channels router,
  middleware, DRF, bearer tokens, pagination, serializers);
- bare: the same Django, settings and database, with no middleware and this
  module as the URL conf: plain sync views that find the user the way the
  API does (the bearer token service `identity.services.api_token_authenticate`,
  or the session store and `django.contrib.auth.get_user`), run the same
  selectors and return the same JSON through JsonResponse. Before the load
  starts, each endpoint's JSON from both is compared and must be equal, so a
  serializer that gains a field fails the run until the bare view follows.

So the ratio is what our request path adds on top of the work the answer
needs. Both are driven with `wrk -t2 -c32 -d10s --latency --timeout 10s`
(ours and bare alternate within each run) on GET /api/meshnet/me,
/api/meshnet/mesh/peers (--peers of the bench user's peers, default 100) and
/api/meshnet/mesh/networks with a bearer token, and /api/meshnet/tokens and
/api/meshnet/passkeys with a session signed in with a passkey (no token
reaches credentials). Any non-2xx answer or socket error stops the run.
Figures are medians of --runs runs; besides requests/s, p50 and p99 it prints
the server process's CPU time per request, which a busy machine disturbs
least. Targets (for me and mesh/peers): throughput ours/bare >= 0.6 and p99
ours/bare <= 2.

Everything lives in a temporary INFRASIM_VAR_DIR (SQLite database, master
key, secret key) and a private redis-server; both servers, wrk and Redis are
stopped at the end, also on errors, Ctrl-C and SIGTERM. --database-url points
both servers at another database instead (it must be a scratch one: the
bench migrates it and adds its rows).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from django.http import JsonResponse
from django.urls import path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infrasim_site.localredis import free_port, start_private_redis  # noqa: E402  (needs ROOT on the path)

# (name, path, how the client signs in): credentials (tokens, passkeys) are
# reachable only from a session signed in with a passkey, never with a token.
ENDPOINTS = [
    ("me", "/api/meshnet/me", "token"),
    ("mesh/peers", "/api/meshnet/mesh/peers", "token"),
    ("tokens", "/api/meshnet/tokens", "session"),
    ("passkeys", "/api/meshnet/passkeys", "session"),
    ("mesh/networks", "/api/meshnet/mesh/networks", "token"),
]
TARGETS_FOR = ("me", "mesh/peers")
TARGET_THROUGHPUT = 0.6
TARGET_P99 = 2.0
UVICORN_ARGS = ["--ws", "websockets-sansio", "--proxy-headers"]  # the Procfile's `web` line


# --- the bare reference: plain Django views, served by a second uvicorn -----------------


def bare_application():
    """uvicorn --factory entry point: our settings, no middleware, this module
    as the URL conf."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "infrasim_site.settings")
    from django.conf import settings

    settings.MIDDLEWARE = []
    settings.ROOT_URLCONF = __name__
    from django.core.asgi import get_asgi_application

    return get_asgi_application()


def _iso(value):
    """A datetime as DRF renders it (UTC with a Z)."""
    if value is None:
        return None
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _bare_user(request):
    """Who is asking, the way the API finds out, minus DRF and middleware:
    the bearer token service, or the session store and auth's get_user."""
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import get_user

    from identity.services import api_token_authenticate

    scheme, _, raw = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        token = api_token_authenticate(raw.strip())
        return token.user if token else None
    engine = import_module(settings.SESSION_ENGINE)
    request.session = engine.SessionStore(request.COOKIES.get(settings.SESSION_COOKIE_NAME))
    user = get_user(request)
    return user if user.is_authenticated else None


def _bare(build):
    def view(request):
        user = _bare_user(request)
        if user is None:
            return JsonResponse({"detail": "Not signed in."}, status=401)
        return JsonResponse(build(user), json_dumps_params={"separators": (",", ":"), "ensure_ascii": False})

    return view


def _page(rows: list) -> dict:
    return {"count": len(rows), "next": None, "previous": None, "results": rows}


def _bare_me(user) -> dict:
    from identity import selectors
    from identity.serializers import identity_payload

    return {
        "user": {
            "account_id": str(user.account_id),
            "display_name": user.display_name,
            "is_operator": user.is_staff,
            "date_joined": _iso(user.date_joined),
        },
        "identity": identity_payload(selectors.identity_for(user)),
    }


def _bare_peers(user) -> dict:
    from mesh import selectors
    from mesh.models import MeshNetwork

    peers = list(selectors.peers_for(user).select_related("network"))
    synced = {
        pk: applied >= generation
        for pk, generation, applied in MeshNetwork.objects.filter(pk__in={p.network_id for p in peers}).values_list(
            "pk", "generation", "applied_generation"
        )
    }
    return _page([
        {
            "id": p.pk, "network": p.network.name, "name": p.name, "public_key": p.public_key,
            "key_epoch": p.key_epoch, "ipv4": p.ipv4, "ipv6": p.ipv6, "allowed_ips": p.allowed_ips,
            "keepalive": p.keepalive, "expires_at": _iso(p.expires_at), "status": p.status,
            "created_at": _iso(p.created_at), "rotated_at": _iso(p.rotated_at), "revoked_at": _iso(p.revoked_at),
            "last_handshake_at": _iso(p.last_handshake_at), "rx_bytes": p.rx_bytes, "tx_bytes": p.tx_bytes,
            "has_preshared_key": bool(p.preshared_key_sealed), "gateway_synced": synced[p.network_id],
        }
        for p in peers
    ])


def _bare_tokens(user) -> dict:
    from identity import selectors

    return _page([
        {
            "id": t.pk, "name": t.name, "scope": t.scope, "prefix": t.prefix, "created_at": _iso(t.created_at),
            "expires_at": _iso(t.expires_at), "revoked_at": _iso(t.revoked_at), "last_used_at": _iso(t.last_used_at),
        }
        for t in selectors.api_tokens_for(user)
    ])


def _bare_passkeys(user) -> dict:
    from identity import selectors

    return _page([
        {
            "id": k.pk, "name": k.name, "created_at": _iso(k.created_at), "last_used_at": _iso(k.last_used_at),
            "discoverable": k.discoverable, "backup_state": k.backup_state,
        }
        for k in selectors.passkeys_for(user)
    ])


def _bare_networks(user) -> dict:
    from mesh import selectors

    return _page([
        {
            "id": n.pk, "name": n.name, "ipv4_cidr": n.ipv4_cidr, "ipv6_prefix": n.ipv6_prefix,
            "endpoint": n.endpoint, "listen_port": n.listen_port, "gateway_public_key": n.gateway_public_key,
            "default_keepalive": n.default_keepalive, "peer_quota": n.peer_quota,
            "gateway_synced": n.applied_generation >= n.generation,
        }
        for n in selectors.networks()
    ])


_BUILDERS = {
    "me": _bare_me,
    "mesh/peers": _bare_peers,
    "tokens": _bare_tokens,
    "passkeys": _bare_passkeys,
    "mesh/networks": _bare_networks,
}
urlpatterns = [path(url.lstrip("/"), _bare(_BUILDERS[name])) for name, url, _ in ENDPOINTS]


# --- data ---------------------------------------------------------------------------


def make_data(peers: int) -> dict[str, str]:
    """The bench user with its identity, tokens, passkeys and peers, plus a
    few networks; returns the request headers that sign in as that user with
    a token and with a passkey session."""
    from importlib import import_module

    from django.conf import settings
    from django.db import connections
    from django.http import HttpRequest
    from django_otp_webauthn.models import WebAuthnCredential

    from identity import provisioning, services as identity_services
    from identity.models import User
    from identity.sessions import start_session
    from mesh import services as mesh_services

    user = User.objects.create_user(display_name="Bench User", signup_state=User.SignupState.ACTIVE)
    provisioning.identity_claim(actor=user, handle="benchuser")
    _, secret = identity_services.api_token_create(actor=user, name="bench")
    for i in range(4):
        identity_services.api_token_create(actor=user, name=f"bench token {i}")
    passkeys = [
        WebAuthnCredential.objects.create(
            user=user, name=f"bench key {i}", credential_id=os.urandom(32), public_key=os.urandom(77),
            aaguid="00000000-0000-0000-0000-000000000000", discoverable=True,
        )
        for i in range(3)
    ]
    request = HttpRequest()
    request.session = import_module(settings.SESSION_ENGINE).SessionStore()
    start_session(request, user, passkeys[0])
    request.session.save()
    for i in range(3):
        mesh_services.network_create(
            actor=None, name=f"bench-{i}", ipv4_cidr=f"100.{100 + i}.0.0/16", ipv6_prefix=f"fd42:1f5a:7c{10 + i}::/64"
        )
    for i in range(peers):
        mesh_services.peer_create(actor=user, name=f"bench peer {i}", generate_key=True)
    connections.close_all()
    return {
        "token": f"Authorization: Bearer {secret}",
        "session": f"Cookie: {settings.SESSION_COOKIE_NAME}={request.session.session_key}",
    }


# --- servers and wrk ------------------------------------------------------------------


def stop_process(process: subprocess.Popen, timeout: float = 10) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def start_server(app: list[str], port: int, log: Path, cleanup: contextlib.ExitStack) -> subprocess.Popen:
    command = [sys.executable, "-m", "uvicorn", *app, "--host", "127.0.0.1", "--port", str(port), *UVICORN_ARGS]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    cleanup.callback(stop_process, process)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/meshnet/me", timeout=2)
        except urllib.error.HTTPError:
            return process  # it answers (401/403 without a token)
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn on port {port} did not start:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.1)
        else:
            return process


def get_json(port: int, url: str, header: str):
    name, _, value = header.partition(": ")
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{url}", headers={name: value, "Accept": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * _UNITS[unit]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(port: int, pid: int, url: str, header: str, seconds: int) -> dict:
    # A latency above wrk's default 2 s timeout would drop out of the
    # percentiles instead of counting against us; 10 s keeps it in.
    command = ["wrk", "-t2", "-c32", f"-d{seconds}s", "--timeout", "10s", "--latency",
               "-H", header, "-H", "Accept: application/json",
               f"http://127.0.0.1:{port}{url}"]
    cpu_before = cpu_seconds(pid)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = process.communicate(timeout=seconds + 60)
    finally:
        stop_process(process, timeout=5)
    cpu = cpu_seconds(pid) - cpu_before
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if errors or socket_errors:
        raise RuntimeError(f"wrk saw failed requests on {url} (port {port}):\n{out}")
    latency = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+(?:us|ms|s|m))\s*$", out, re.M))
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": _ms(latency["50"]),
        "p99": _ms(latency["99"]),
        "cpu": cpu * 1000 / int(re.search(r"(\d+) requests in", out).group(1)),
    }


# --- main ---------------------------------------------------------------------------


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per endpoint; medians reported (default 3)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--peers", type=int, default=100, help="peers of the bench user (default 100)")
    parser.add_argument("--only", default="", help="comma-separated endpoint names (default all: "
                        + ", ".join(name for name, _, _ in ENDPOINTS) + ")")
    parser.add_argument("--database-url", default="", help="a scratch database instead of SQLite in the temp dir")
    parser.add_argument("--quick", action="store_true", help="one run of 3 s per endpoint")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.duration = 1, 3
    if args.runs < 1 or args.duration < 1 or not 1 <= args.peers <= 1000:
        parser.error("--runs >= 1, --duration >= 1 and 1 <= --peers <= 1000")
    known = [name for name, _, _ in ENDPOINTS]
    args.only = [name.strip() for name in args.only.split(",") if name.strip()] or known
    if unknown := set(args.only) - set(known):
        parser.error(f"unknown endpoints: {', '.join(sorted(unknown))}")
    return args


def main() -> int:
    args = parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("`wrk` is not installed (Debian/Ubuntu, as root: apt-get install wrk)")
    # SIGTERM unwinds like Ctrl-C, so the cleanup below runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    with contextlib.ExitStack() as cleanup:
        workdir = Path(tempfile.mkdtemp(prefix="infrasim-bench-api-"))
        cleanup.callback(shutil.rmtree, workdir, True)
        for name in ("INFRASIM_MASTER_KEY", "INFRASIM_MASTER_KEY_FILE", "SECRET_KEY", "STATIC_ROOT", "DATABASE_URL"):
            os.environ.pop(name, None)
        os.environ["INFRASIM_VAR_DIR"] = str(workdir)
        os.environ["DEBUG"] = "false"  # DEBUG keeps every query in memory
        os.environ["MESH_PEER_QUOTA"] = str(max(args.peers, 20))
        os.environ["DJANGO_SETTINGS_MODULE"] = "infrasim_site.settings"
        if args.database_url:
            os.environ["DATABASE_URL"] = args.database_url
        # A private Redis: the peers' gateway syncs are queued and nobody consumes them.
        redis_url, redis_process = start_private_redis(str(workdir))
        cleanup.callback(stop_process, redis_process)
        os.environ["REDIS_URL"] = redis_url

        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        headers = make_data(args.peers)

        servers = {}
        for side, app in (("ours", ["infrasim_site.asgi:application"]),
                          ("bare", ["--factory", "bench.api_load:bare_application"])):
            port = free_port()
            servers[side] = (port, start_server(app, port, workdir / f"{side}.log", cleanup).pid)
        endpoints = [(name, url, auth) for name, url, auth in ENDPOINTS if name in args.only]
        for name, url, auth in endpoints:
            get_json(servers["ours"][0], url, headers[auth])  # first use stamps the token's last_used_at
            mine, reference = (get_json(servers[side][0], url, headers[auth]) for side in ("ours", "bare"))
            if mine != reference:
                raise RuntimeError(f"{name}: the bare view's JSON differs from ours:\nours {mine}\nbare {reference}")
        for port, pid in servers.values():
            run_wrk(port, pid, "/api/meshnet/me", headers["token"], 2)  # warm-up, not counted

        db = "PostgreSQL" if args.database_url.startswith(("postgres", "pgsql")) else "SQLite"
        print(f"# API load: wrk -t2 -c32 -d{args.duration}s, medians of {args.runs} run(s), {db}, "
              f"{args.peers} peers, {os.cpu_count()} CPUs; ours pid {servers['ours'][1]}, "
              f"bare pid {servers['bare'][1]} (for py-spy)", flush=True)
        print("# cpu: CPU time of the server process per request (user + system), "
              "steadier than the rest on a busy machine")
        print(f"{'endpoint':<14} {'auth':<8}| {'ours rps':>8} {'p50 ms':>7} {'p99 ms':>7} {'cpu ms':>6} "
              f"| {'bare rps':>8} {'p50 ms':>7} {'p99 ms':>7} {'cpu ms':>6} | ratios")
        results = {}
        for name, url, auth in endpoints:
            samples = {"ours": [], "bare": []}
            for run in range(args.runs):
                for side in ("ours", "bare") if run % 2 == 0 else ("bare", "ours"):
                    port, pid = servers[side]
                    samples[side].append(run_wrk(port, pid, url, headers[auth], args.duration))
            med = {side: {k: statistics.median(s[k] for s in runs) for k in ("rps", "p50", "p99", "cpu")}
                   for side, runs in samples.items()}
            o, b = med["ours"], med["bare"]
            throughput, p99 = o["rps"] / b["rps"], o["p99"] / b["p99"]
            results[name] = (throughput, p99)
            print(f"{name:<14} {auth:<8}| {o['rps']:>8.0f} {o['p50']:>7.1f} {o['p99']:>7.1f} {o['cpu']:>6.2f} "
                  f"| {b['rps']:>8.0f} {b['p50']:>7.1f} {b['p99']:>7.1f} {b['cpu']:>6.2f} "
                  f"| p99 ours/bare = {p99:.2f}, throughput ours/bare = {throughput:.2f}", flush=True)

        print(f"\n## targets (throughput ours/bare >= {TARGET_THROUGHPUT}, p99 ours/bare <= {TARGET_P99})")
        for name in TARGETS_FOR:
            if name in results:
                throughput, p99 = results[name]
                verdict = "PASS" if throughput >= TARGET_THROUGHPUT and p99 <= TARGET_P99 else "FAIL"
                print(f"{name}: {verdict}")
        print("\n## ratios")
        for name, (throughput, p99) in results.items():
            print(f"throughput ours/bare[{name}] = {throughput:.2f}")
            print(f"p99 ours/bare[{name}] = {p99:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
