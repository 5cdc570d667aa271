#!/usr/bin/env python
"""Benchmark: the transparency log (forensics.ledger), appends and proofs.

Run from the project root:  .venv/bin/python bench/transparency_log.py
(--quick for a smoke run: logs of 10^4 and 10^5 entries; --help for the knobs).

1. Proofs. The log is grown to each of --sizes entries with ledger.record_many
   (leaves, nodes and head computed in Python, written in batches; untimed),
   then ledger.inclusion_proof(index, tree_size) for --proofs random pairs
   (half for the whole tree, half for a random earlier size) and as many
   consistency_proof(first, second) pairs. Reference: the approach before the
   stored nodes, reading every leaf hash of the tree in index order and
   forensics.merkle.inclusion_proof over them (--reference-runs times).
   Target: inclusion proof median < 2 ms at 10^6 entries, growing with log n.
2. Appends, onto the log the proofs left (10^6 entries by default). Ours:
   --appends calls of ledger.record(), each in a transaction of its own, as
   a service outside a transaction makes them (head lock, leaf hash, entry,
   about one stored node, head update). Reference: a bare INSERT of the same
   rows (leaf bytes and hashes computed beforehand, untimed) into a table with
   the entry table's columns and indexes, also one transaction each. Median
   of --runs runs, the two alternating. Target: ours >= 2,000 appends/s.
3. Verification (for information): ledger.verify() over the whole log at each
   size, its time and the peak of Python memory it allocated (tracemalloc), which
   stays flat as the log grows since verify streams.

The database is a temporary SQLite file (WAL, synchronous=NORMAL, as the
settings make it) in a temporary INFRASIM_VAR_DIR, removed at the end, also on
errors, Ctrl-C and SIGTERM. --database-url points at another database instead
(a scratch one: the bench migrates it and fills its log).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_APPENDS_PER_SECOND = 2000
TARGET_PROOF_MS = 2.0
TARGET_PROOF_SIZE = 10**6


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def events(count: int, start: int) -> list[dict]:
    """Events shaped like the apps' own: a kind, an actor label, a subject and a small payload."""
    return [
        {"kind": "mesh.peer.created", "actor": f"user:{n % 97 + 1}", "subject": f"mesh_peer:{start + n}",
         "payload": {"name": f"laptop-{start + n}", "ips": ["100.96.0.2"], "network": n % 13}}
        for n in range(count)
    ]


# --- appends --------------------------------------------------------------------------------


def bare_table():
    """A table with the entry table's columns and indexes, for the reference INSERTs."""
    from django.db import connection, models

    from forensics.models import LedgerEntry

    attrs = {"__module__": __name__, "Meta": type("Meta", (), {"app_label": "bench", "db_table": "bench_bare_entry"})}
    for field in LedgerEntry._meta.local_fields:
        if not field.primary_key:
            attrs[field.name] = field.clone()
    model = type("BareEntry", (models.Model,), attrs)
    with connection.schema_editor() as editor:
        editor.create_model(model)
    return model


def bench_appends(args: argparse.Namespace) -> tuple[float, float]:
    from django.db import connection, transaction
    from django.utils import timezone

    from forensics import ledger
    from forensics.merkle import leaf_hash

    bare = bare_table()
    fields = [field for field in bare._meta.local_fields if not field.primary_key]
    columns = [field.column for field in fields]
    quote = connection.ops.quote_name
    insert = (f"INSERT INTO {quote(bare._meta.db_table)} ({', '.join(quote(column) for column in columns)}) "
              f"VALUES ({', '.join(['%s'] * len(columns))})")
    size = ledger.tree_head()["size"]
    ours_rate: list[float] = []
    bare_rate: list[float] = []
    next_bare_index = 0
    for run in range(args.runs):
        batch = events(args.appends, start=size + run * args.appends)
        rows = []
        for offset, event in enumerate(batch):
            recorded_at = timezone.now()
            data = ledger.canonical_leaf(**event, recorded_at=recorded_at.isoformat())
            values = {"index": next_bare_index + offset, "recorded_at": recorded_at, "kind": event["kind"],
                      "actor": event["actor"], "subject": event["subject"], "payload": event["payload"],
                      "concerns": ledger.concerned_user(event["actor"]), "leaf": data, "leaf_version": 1,
                      "leaf_hash": leaf_hash(data).hex()}
            rows.append([field.get_db_prep_save(values[field.name], connection) for field in fields])
        next_bare_index += len(rows)

        def ours() -> None:
            for event in batch:
                ledger.record(**event)

        def reference() -> None:
            for row in rows:
                with transaction.atomic(), connection.cursor() as cursor:
                    cursor.execute(insert, row)

        for side in (("ours", "bare") if run % 2 == 0 else ("bare", "ours")):
            if side == "ours":
                ours_rate.append(args.appends / timed(ours))
            else:
                bare_rate.append(args.appends / timed(reference))
    with connection.schema_editor() as editor:
        editor.delete_model(bare)
    ours_median, bare_median = statistics.median(ours_rate), statistics.median(bare_rate)
    print(f"\n## appends (onto a log of {size} entries; median of {args.runs} runs of {args.appends}, "
          "one transaction each, alternating)")
    print(f"ledger.record  {ours_median:9.0f} /s  (runs {', '.join(f'{rate:.0f}' for rate in ours_rate)})")
    print(f"bare INSERT    {bare_median:9.0f} /s  (runs {', '.join(f'{rate:.0f}' for rate in bare_rate)})")
    print(f"appends/s {ours_median:.0f} >= {TARGET_APPENDS_PER_SECOND}: "
          f"{verdict(ours_median >= TARGET_APPENDS_PER_SECOND)}")
    return ours_median, bare_median


# --- proofs ---------------------------------------------------------------------------------


def grow_to(size: int) -> float:
    from forensics import ledger

    current = ledger.tree_head()["size"]
    started = time.perf_counter()
    while current < size:
        chunk = min(50_000, size - current)
        current = ledger.record_many(events(chunk, start=current))
    return time.perf_counter() - started


def proof_times(size: int, count: int, rng: random.Random) -> tuple[list[float], list[float]]:
    from forensics import ledger
    from forensics.merkle import verify_inclusion

    inclusion: list[float] = []
    consistency: list[float] = []
    for n in range(count):
        tree_size = size if n % 2 == 0 else rng.randint(1, size)
        index = rng.randrange(tree_size)
        started = time.perf_counter()
        path = ledger.inclusion_proof(index, tree_size)
        inclusion.append(time.perf_counter() - started)
        if n < 20:  # a few answers checked, untimed: a fast wrong proof would be worthless
            leaf = bytes.fromhex(ledger.entry_at(index).leaf_hash)
            verify_inclusion(leaf=leaf, index=index, size=tree_size, proof=path, root=ledger.root_at(tree_size))
        first = rng.randint(1, tree_size)
        started = time.perf_counter()
        ledger.consistency_proof(first, tree_size)
        consistency.append(time.perf_counter() - started)
    return inclusion, consistency


def reference_proof_time(size: int, runs: int, rng: random.Random) -> float:
    """Before the stored nodes: every leaf of the tree read, then the path computed from them."""
    from forensics import merkle
    from forensics.models import LedgerEntry

    def rehash() -> None:
        hashes = LedgerEntry.objects.filter(index__lt=size).order_by("index").values_list("leaf_hash", flat=True)
        merkle.inclusion_proof(rng.randrange(size), [bytes.fromhex(h) for h in hashes.iterator(chunk_size=10_000)])

    return statistics.median(timed(rehash) for _ in range(runs))


def verify_cost() -> tuple[float, float]:
    from forensics import ledger

    tracemalloc.start()
    started = time.perf_counter()
    result = ledger.verify()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    if not result.ok:
        raise RuntimeError(f"the benchmark's log does not verify: {result.problems[:5]}")
    return seconds, peak / 2**20


def bench_proofs(args: argparse.Namespace) -> dict[int, tuple[float, float]]:
    rng = random.Random(6962)
    results: dict[int, tuple[float, float]] = {}
    print(f"\n## proofs (median and p95 of {args.proofs} random pairs each; reference: median of "
          f"{args.reference_runs} runs)")
    print(f"{'entries':>9s} {'build s':>8s} {'inclusion ms':>13s} {'p95':>6s} {'consistency ms':>15s} "
          f"{'rehash ms':>10s} {'verify s':>9s} {'verify peak MiB':>16s}")
    for size in args.sizes:
        build_s = grow_to(size)
        inclusion, consistency = proof_times(size, args.proofs, rng)
        reference = reference_proof_time(size, args.reference_runs, rng)
        verify_s, verify_mib = verify_cost() if args.verify else (float("nan"), float("nan"))
        median = statistics.median(inclusion)
        p95 = statistics.quantiles(inclusion, n=20)[-1]
        results[size] = (median, reference)
        print(f"{size:9d} {build_s:8.1f} {median * 1e3:13.3f} {p95 * 1e3:6.3f} "
              f"{statistics.median(consistency) * 1e3:15.3f} {reference * 1e3:10.1f} {verify_s:9.1f} "
              f"{verify_mib:16.1f}")
    if TARGET_PROOF_SIZE in results:
        median = results[TARGET_PROOF_SIZE][0] * 1e3
        print(f"inclusion proof at 10^6: {median:.3f} ms < {TARGET_PROOF_MS}: {verdict(median < TARGET_PROOF_MS)}")
    return results


# --- main -----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="append runs of each side; the median counts (5)")
    parser.add_argument("--appends", type=int, default=2000, help="appends per run (2000)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10**4, 10**5, 10**6],
                        help="log sizes for the proofs, ascending (10000 100000 1000000)")
    parser.add_argument("--proofs", type=int, default=2000, help="proof pairs timed at each size (2000)")
    parser.add_argument("--reference-runs", type=int, default=3, help="runs of the rehashing reference (3)")
    parser.add_argument("--no-verify", dest="verify", action="store_false", help="skip ledger.verify at each size")
    parser.add_argument("--quick", action="store_true", help="3 runs of 1000 appends; logs of 10^4 and 10^5 entries")
    parser.add_argument("--database-url", help="a scratch database to use instead of a temporary SQLite file")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.appends, args.sizes, args.proofs = 3, 1000, [10**4, 10**5], 500
    if args.runs < 1 or args.appends < 1 or args.proofs < 20 or args.reference_runs < 1:
        parser.error("--runs, --appends and --reference-runs must be positive, --proofs at least 20")
    if args.sizes != sorted(args.sizes) or args.sizes[0] < 1:
        parser.error("--sizes must be positive and ascending")
    return args


def setup_django(workdir: Path, database_url: str | None) -> None:
    os.environ["INFRASIM_VAR_DIR"] = str(workdir / "var")
    for name in ("DATABASE_URL", "INFRASIM_MASTER_KEY", "INFRASIM_MASTER_KEY_FILE", "SECRET_KEY", "STATIC_ROOT"):
        os.environ.pop(name, None)
    if database_url:
        os.environ["DATABASE_URL"] = database_url
    os.environ.update({"DEBUG": "false", "LOG_LEVEL": "WARNING", "DJANGO_SETTINGS_MODULE": "infrasim_site.settings"})
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def bench(args: argparse.Namespace) -> None:
    from django.db import connection

    from forensics import ledger

    if ledger.tree_head()["size"]:
        raise SystemExit("the database's log is not empty: use a scratch database")
    print(f"# database: {connection.vendor} {connection.settings_dict['NAME']}")
    print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start")
    proofs = bench_proofs(args)
    ours, bare = bench_appends(args)
    smallest, largest = min(proofs), max(proofs)

    print("\n## ratios")
    print(f"appends_ours/bare_insert = {ours / bare:.3f}")
    for size, (median, reference) in proofs.items():
        print(f"inclusion_proof_rehash/ours_{size} = {reference / median:.0f}")
    if largest > smallest:
        print(f"inclusion_proof_ms_{largest}/{smallest} = {proofs[largest][0] / proofs[smallest][0]:.2f} "
              f"(log2 ratio {largest.bit_length() / smallest.bit_length():.2f})")


def main() -> int:
    args = parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with contextlib.ExitStack() as cleanup:
            workdir = Path(tempfile.mkdtemp(prefix="itl-"))
            cleanup.callback(shutil.rmtree, workdir, True)
            setup_django(workdir, args.database_url)
            bench(args)
    except KeyboardInterrupt:
        print("interrupted; the temporary directory is removed", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
