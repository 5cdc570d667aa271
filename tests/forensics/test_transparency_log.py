"""The ledger as a transparency log: indexes from one serialized appender,
stored nodes, O(log n) proofs for any earlier tree size, signed checkpoints,
per-user visibility, and a verifier that names what was tampered with."""

import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction
from hypothesis import given, settings
from hypothesis import strategies as st

from forensics import ledger
from forensics.append_only import TABLES, drop_append_only_triggers, install_append_only_triggers
from forensics.merkle import (
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    verify_consistency,
    verify_inclusion,
)
from forensics.models import LedgerCheckpoint, LedgerEntry, LedgerNode
from forensics.offline_verify import NoteError, parse_checkpoint, verify_note
from forensics.signatures import log_vkey
from tests import database
from tests.people import person

ROOT = Path(__file__).resolve().parents[2]


def _record(count: int) -> list[LedgerEntry]:
    return [ledger.record(kind="test.event", actor="system", subject=f"thing:{n}", payload={"n": n}) for n in range(count)]


def _leaves() -> list[bytes]:
    return [bytes.fromhex(h) for h in LedgerEntry.objects.order_by("index").values_list("leaf_hash", flat=True)]


# --- Proofs -------------------------------------------------------------------------------


def test_proofs_for_any_earlier_tree_equal_the_reference_and_verify(db):
    _record(150)
    leaves = _leaves()
    assert [entry.index for entry in LedgerEntry.objects.order_by("index")] == list(range(len(leaves)))

    @settings(max_examples=400, deadline=None, derandomize=True)
    @given(st.data())
    def proofs_match(data):
        size = data.draw(st.integers(1, len(leaves)), label="tree size")
        index = data.draw(st.integers(0, size - 1), label="index")
        first = data.draw(st.integers(1, size), label="first size")
        root = merkle_root(leaves[:size])
        assert ledger.root_at(size) == root

        path = ledger.inclusion_proof(index, size)
        assert path == inclusion_proof(index, leaves[:size])
        verify_inclusion(leaf=leaves[index], index=index, size=size, proof=path, root=root)

        proof = ledger.consistency_proof(first, size)
        assert proof == consistency_proof(first, leaves[:size])
        verify_consistency(size1=first, size2=size, root1=merkle_root(leaves[:first]), root2=root, proof=proof)

    proofs_match()


def test_every_tree_size_and_edge_has_the_reference_root_and_proofs(db):
    _record(33)
    leaves = _leaves()
    for size in range(1, len(leaves) + 1):
        assert ledger.root_at(size) == merkle_root(leaves[:size])
        for index in {0, size // 2, size - 1}:
            assert ledger.inclusion_proof(index, size) == inclusion_proof(index, leaves[:size])
        for first in {1, size // 2 or 1, size - 1 or 1, size}:
            assert ledger.consistency_proof(first, size) == consistency_proof(first, leaves[:size])


def test_a_proof_is_one_query_of_a_few_stored_nodes(db, django_assert_num_queries):
    _record(100)
    leaves = _leaves()
    with django_assert_num_queries(1):
        path = ledger.inclusion_proof(37, 99)
    verify_inclusion(leaf=leaves[37], index=37, size=99, proof=path, root=merkle_root(leaves[:99]))
    with django_assert_num_queries(1):
        proof = ledger.consistency_proof(13, 99)
    verify_consistency(size1=13, size2=99, root1=merkle_root(leaves[:13]), root2=merkle_root(leaves[:99]), proof=proof)
    # About one stored node per append: n - popcount(n) of them for n leaves.
    assert LedgerNode.objects.count() == 100 - (100).bit_count()


def test_proofs_beyond_the_log_are_refused(db):
    size = ledger.tree_head()["size"]
    with pytest.raises(ProofError):
        ledger.inclusion_proof(0, size + 1)
    _record(5)
    with pytest.raises(ProofError, match=f"fewer than {size + 7} entries"):
        ledger.inclusion_proof(2, size + 7)
    with pytest.raises(ProofError, match=f"fewer than {size + 6} entries"):
        ledger.consistency_proof(size + 6, size + 6)
    with pytest.raises(ProofError):
        ledger.root_at(size + 6)
    with pytest.raises(ProofError):
        ledger.inclusion_proof(5, 5)
    with pytest.raises(ProofError):
        ledger.consistency_proof(0, 3)


def test_the_head_keeps_the_root_without_a_scan(db, django_assert_num_queries):
    _record(21)
    with django_assert_num_queries(1):
        head = ledger.tree_head()
    assert head == {"size": 21, "root": merkle_root(_leaves()).hex()}


def test_many_events_appended_at_once_make_the_same_kind_of_tree(db):
    _record(3)
    size = ledger.record_many(
        {"kind": "test.bulk", "actor": f"user:{n % 4}", "subject": f"thing:{n}", "payload": {"n": n}} for n in range(70)
    )
    _record(2)
    assert size == 73
    leaves = _leaves()
    assert ledger.tree_head() == {"size": 75, "root": merkle_root(leaves).hex()}
    assert ledger.inclusion_proof(40, 75) == inclusion_proof(40, leaves)
    assert LedgerEntry.objects.get(index=5).concerns == 2
    result = ledger.verify()
    assert result.ok, result.problems


# --- Appending ------------------------------------------------------------------------------


def test_a_rolled_back_event_leaves_no_gap(db):
    first = ledger.record(kind="test.event", actor="system", subject="thing:1")
    with pytest.raises(RuntimeError), transaction.atomic():
        ledger.record(kind="test.event", actor="system", subject="thing:2")
        raise RuntimeError("the change failed")
    after = ledger.record(kind="test.event", actor="system", subject="thing:3")
    assert after.index == first.index + 1
    assert ledger.tree_head()["size"] == after.index + 1
    assert ledger.verify().ok


APPENDER = """
import sys

import django

django.setup()
from forensics import ledger

worker, appends = int(sys.argv[1]), int(sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
for n in range(appends):
    ledger.record(kind="test.concurrent", actor=f"user:{worker}", subject=f"worker:{worker}", payload={"n": n})
    if n % 3 == 1:
        ledger.checkpoint()
print("done", flush=True)
"""


def test_appends_from_parallel_processes_get_every_index_once(transactional_db):
    workers, appends = 5, 10
    env = {**os.environ, "DATABASE_URL": database.url_for_subprocess(),
           "DJANGO_SETTINGS_MODULE": "infrasim_site.settings"}
    processes = [
        subprocess.Popen([sys.executable, "-c", APPENDER, str(worker), str(appends)], cwd=ROOT, env=env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for worker in range(workers)
    ]
    try:
        for process in processes:
            assert process.stdout.readline().strip() == "ready", process.stderr.read()
        for process in processes:  # all set up: let them go together
            process.stdin.write("go\n")
            process.stdin.flush()
        for process in processes:
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0, err
            assert out.strip() == "done"
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()

    indexes = list(LedgerEntry.objects.order_by("index").values_list("index", flat=True))
    assert indexes == list(range(workers * appends))
    for worker in range(workers):
        own = LedgerEntry.objects.filter(subject=f"worker:{worker}").order_by("index")
        assert [entry.payload["n"] for entry in own] == list(range(appends))
        assert {entry.concerns for entry in own} == {worker}
    out = io.StringIO()
    call_command("ledger_verify", stdout=out, stderr=io.StringIO())
    head = ledger.tree_head()
    assert out.getvalue().splitlines()[0] == f"size {workers * appends} root {head['root']}"

    latest = ledger.parse_checkpoint_note(ledger.checkpoint())
    taken = list(LedgerCheckpoint.objects.exclude(size=latest.size))
    assert len(taken) >= appends // 3
    for stored in taken:
        earlier = ledger.parse_checkpoint_note(stored.note)
        verify_consistency(size1=earlier.size, size2=latest.size, root1=earlier.root, root2=latest.root,
                           proof=ledger.consistency_proof(earlier.size, latest.size))


# --- Append-only in the database ----------------------------------------------------------


@pytest.mark.parametrize("table", list(TABLES))
def test_the_database_refuses_to_change_or_remove_log_rows(db, table):
    _record(2)
    ledger.checkpoint()
    counts = [model.objects.count() for model in (LedgerEntry, LedgerNode, LedgerCheckpoint)]
    statements = [f"UPDATE {table} SET id = id + 1000", f"DELETE FROM {table}"]
    if connection.vendor == "postgresql":
        statements.append(f"TRUNCATE {table}")
    with connection.cursor() as cursor:
        install_append_only_triggers(cursor, connection.vendor)  # as migration 0004 left them
        for statement in statements:
            with pytest.raises(DatabaseError, match=f"{table} is append-only"), transaction.atomic():
                cursor.execute(statement)
    assert [model.objects.count() for model in (LedgerEntry, LedgerNode, LedgerCheckpoint)] == counts


# --- Tampering outside the application ----------------------------------------------------


def _tamper(*statements: tuple[str, list]) -> None:
    """What someone with the database's credentials can do: the triggers
    refuse the change, so they are dropped first."""
    with connection.cursor() as cursor:
        install_append_only_triggers(cursor, connection.vendor)
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            cursor.execute(*statements[0])
        drop_append_only_triggers(cursor, connection.vendor)
        for statement in statements:
            cursor.execute(*statement)


def _problems() -> str:
    errors = io.StringIO()
    with pytest.raises(CommandError, match="does not verify"):
        call_command("ledger_verify", stdout=io.StringIO(), stderr=errors)
    return errors.getvalue()


@pytest.fixture()
def log(db) -> list[LedgerEntry]:
    """Eleven entries: an odd size, so the last one sits on the ragged edge
    that no stored node covers yet."""
    entries = _record(11)
    ledger.checkpoint_for(8)
    assert ledger.verify().ok
    return entries


@pytest.mark.parametrize("position", [5, 10])
def test_rewritten_leaf_bytes_are_caught_and_the_entry_named(log, position):
    target = log[position]
    forged = ledger.canonical_leaf(kind="test.event", actor="system", subject=f"thing:{position}",
                                   payload={"n": 99}, recorded_at=target.recorded_at.isoformat())
    _tamper(("UPDATE forensics_ledgerentry SET leaf = %s, leaf_hash = %s, payload = %s WHERE id = %s",
             [forged, leaf_hash(forged).hex(), json.dumps({"n": 99}), target.pk]))
    problems = _problems()
    assert f"#{target.pk} (index {position})" in problems
    if position < 8:
        assert "checkpoint at size 8 holds root" in problems


def test_a_deleted_entry_is_caught_by_its_missing_index(log):
    _tamper(("DELETE FROM forensics_ledgerentry WHERE id = %s", [log[6].pk]))
    assert "index 6 is missing: its entry was deleted" in _problems()


@pytest.mark.parametrize("pair", [(2, 7), (4, 5), (3, 10)])
def test_swapped_entries_are_caught_and_both_named(log, pair):
    first, second = (log[position] for position in pair)
    move = 'UPDATE forensics_ledgerentry SET "index" = %s WHERE id = %s'
    _tamper((move, [-1, first.pk]), (move, [first.index, second.pk]), (move, [second.index, first.pk]))
    problems = _problems()
    assert f"#{first.pk} (index {second.index})" in problems
    assert f"#{second.pk} (index {first.index})" in problems


def test_a_rewritten_node_head_or_checkpoint_is_caught(log):
    other_note = ledger.checkpoint()
    _tamper(
        ("UPDATE forensics_ledgernode SET hash = %s WHERE level = 2 AND \"index\" = 1", [bytes(32)]),
        ("UPDATE forensics_ledgerhead SET root = %s", [bytes(32)]),
        ("UPDATE forensics_ledgercheckpoint SET note = %s WHERE size = 8", [other_note]),
    )
    problems = _problems()
    assert "stored node 2/1 over indexes 4..7 was rewritten" in problems
    assert f"the head's root {bytes(32).hex()} is not the root of its 11 entries" in problems
    assert "checkpoint at size 8: its note signs size 11" in problems


# --- Checkpoints --------------------------------------------------------------------------


def test_a_checkpoint_is_signed_by_the_log_key_and_kept_once_per_size(db):
    _record(4)
    note = ledger.checkpoint()
    origin, size, root = parse_checkpoint(verify_note(note, log_vkey()))
    assert (size, root.hex()) == (4, ledger.tree_head()["root"])
    assert ledger.checkpoint() == note
    assert LedgerCheckpoint.objects.filter(size=4).count() == 1
    earlier = ledger.parse_checkpoint_note(ledger.checkpoint_for(2))
    assert (earlier.size, earlier.root) == (2, merkle_root(_leaves()[:2]))
    assert sorted(LedgerCheckpoint.objects.values_list("size", flat=True)) == [2, 4]
    forged = note.replace(f"\n{size}\n", "\n5\n")
    with pytest.raises(NoteError):
        ledger.parse_checkpoint_note(forged)
    assert ledger.verify().checkpoints == 2


# --- Who reads what -----------------------------------------------------------------------


def test_entries_are_visible_to_the_user_they_concern_and_to_operators(db):
    alice, bob, operator = person("alice"), person("bob"), person("olga", operator=True)
    about_alice = ledger.record(kind="test.event", actor=ledger.actor_label(alice), subject="thing:1")
    about_bob = ledger.record(kind="test.event", actor="system", subject=f"user:{bob.pk}", concerns=bob.pk)
    by_operator = ledger.record(kind="test.event", actor=ledger.actor_label(operator), subject="thing:2")
    about_nobody = ledger.record(kind="test.event", actor="system", subject="thing:3")
    assert about_alice.concerns == alice.pk and by_operator.concerns == operator.pk
    assert about_nobody.concerns is None
    mine = [about_alice.pk, about_bob.pk, by_operator.pk, about_nobody.pk]
    assert list(ledger.entries_visible_to(alice).filter(pk__in=mine)) == [about_alice]
    assert list(ledger.entries_visible_to(bob).filter(pk__in=mine)) == [about_bob]
    assert list(ledger.entries_visible_to(operator).filter(pk__in=mine)) == [about_alice, about_bob, by_operator,
                                                                             about_nobody]
    assert not ledger.entries_visible_to(AnonymousUser()).exists()
    assert not ledger.entries_visible_to(None).exists()
    # Who an entry concerns is not part of what was hashed.
    assert "concerns" not in json.loads(bytes(about_bob.leaf))


# --- Migration 0004 -----------------------------------------------------------------------


def _manage(var_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "INFRASIM_VAR_DIR": str(var_dir)}
    env.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    )


def test_migration_keeps_existing_entries_in_id_order_with_their_bytes(tmp_path):
    _manage(tmp_path, "migrate", "forensics", "0003", "--noinput")
    database_file = sqlite3.connect(tmp_path / "infrasim.sqlite3")
    # Ids that are not the insertion order, as a PostgreSQL sequence can hand them out.
    rows = []
    for pk, actor, when in [(7, "user:3", "2026-01-01 10:00:00"), (3, "operator:1", "2026-01-01 10:00:01"),
                            (12, "system", "2026-01-01 10:00:02"), (9, "user:3", "2026-01-01 10:00:03"),
                            (4, "user:5", "2026-01-01 10:00:04")]:
        leaf = ledger.canonical_leaf(kind="test.old", actor=actor, subject=f"thing:{pk}", payload={"pk": pk},
                                     recorded_at=when.replace(" ", "T") + "+00:00")
        rows.append(
            (pk, when, "test.old", actor, f"thing:{pk}", json.dumps({"pk": pk}), leaf, 1, leaf_hash(leaf).hex())
        )
    database_file.executemany(
        "INSERT INTO forensics_ledgerentry (id, recorded_at, kind, actor, subject, payload, leaf, leaf_version, "
        "leaf_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    database_file.commit()
    database_file.close()

    _manage(tmp_path, "migrate", "--noinput")

    database_file = sqlite3.connect(tmp_path / "infrasim.sqlite3")
    migrated = database_file.execute(
        'SELECT id, "index", leaf, leaf_hash, concerns FROM forensics_ledgerentry ORDER BY "index"').fetchall()
    by_id = sorted(rows)
    assert [(pk, index) for pk, index, *_ in migrated] == [(row[0], n) for n, row in enumerate(by_id)]
    assert [(leaf, hashed) for _, _, leaf, hashed, _ in migrated] == [(row[6], row[8]) for row in by_id]
    assert [concerns for *_, concerns in migrated] == [1, 5, 3, 3, None]
    size, root = database_file.execute("SELECT size, root FROM forensics_ledgerhead").fetchone()
    assert (size, root) == (5, merkle_root([bytes.fromhex(row[8]) for row in by_id]))
    database_file.execute("INSERT INTO forensics_ledgercheckpoint (size, root, note, created_at) "
                          "VALUES (5, x'00', 'note', '2026-01-02')")
    for table in TABLES:
        for statement in (f"UPDATE {table} SET id = id + 100", f"DELETE FROM {table}"):
            with pytest.raises(sqlite3.IntegrityError, match=f"{table} is append-only"):
                database_file.execute(statement)
    database_file.rollback()
    database_file.close()

    check = ("from forensics import ledger; e = ledger.record(kind='test.new', actor='system', subject='thing:1'); "
             "r = ledger.verify(); print(e.index, r.ok, r.size, r.problems)")
    assert _manage(tmp_path, "shell", "-c", check).stdout.strip().splitlines()[-1] == "5 True 6 []"
