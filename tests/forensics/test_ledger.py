import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import transaction

from forensics import ledger
from forensics.merkle import leaf_hash, merkle_root
from forensics.models import LedgerEntry

ROOT = Path(__file__).resolve().parents[2]


def _record_some():
    return [
        ledger.record(kind="passkey.added", actor="user:1", subject="passkey:7", payload={"name": "Lab laptop ✓"}),
        ledger.record(kind="mesh.peer.revoked", actor="operator:2", subject="peer:3", payload={"ips": ("100.96.0.2",)}),
        ledger.record(kind="token.created", actor="user:1", subject="token:9"),
    ]


def test_recorded_events_change_the_tree_head(db):
    before = ledger.tree_head()
    entry = ledger.record(kind="test.event", actor="system", subject="thing:1", payload={"n": 1})
    after = ledger.tree_head()
    assert after["size"] == before["size"] + 1
    assert after["root"] != before["root"]
    assert entry.index == before["size"]
    assert len(entry.leaf_hash) == 64


def test_an_event_rolls_back_with_the_change_it_records(db):
    count = LedgerEntry.objects.count()
    with pytest.raises(RuntimeError), transaction.atomic():
        ledger.record(kind="test.event", actor="system", subject="thing:2")
        raise RuntimeError("the change failed")
    assert LedgerEntry.objects.count() == count


def test_every_leaf_and_the_root_can_be_recomputed_from_the_stored_rows(db):
    _record_some()
    hashes = []
    for row in LedgerEntry.objects.order_by("index"):
        data = bytes(row.leaf)
        assert hashlib.sha256(b"\x00" + data).hexdigest() == row.leaf_hash
        leaf = json.loads(data)
        assert (leaf["kind"], leaf["actor"], leaf["subject"], leaf["payload"]) == (
            row.kind,
            row.actor,
            row.subject,
            row.payload,
        )
        assert leaf["recorded_at"] == row.recorded_at.isoformat()
        hashes.append(hashlib.sha256(b"\x00" + data).digest())
    head = ledger.tree_head()
    assert merkle_root(hashes).hex() == head["root"]
    result = ledger.verify()
    assert result.ok, result.problems
    assert (result.size, result.root) == (head["size"], head["root"])


def test_the_stored_time_is_the_time_that_was_hashed(db):
    entry = ledger.record(kind="test.event", actor="system", subject="thing:3")
    stored = LedgerEntry.objects.get(pk=entry.pk)
    assert json.loads(bytes(stored.leaf))["recorded_at"] == stored.recorded_at.isoformat()
    assert stored.recorded_at == entry.recorded_at


TAMPERING = {
    "kind": {"kind": "passkey.renamed"},
    "actor": {"actor": "system"},
    "payload": {"payload": {"ips": ["100.96.0.99"]}},
    "recorded_at": {"recorded_at": "2020-01-01T00:00:00+00:00"},
    "leaf": {"leaf": b'{"kind":"forged"}'},
    "leaf_hash": {"leaf_hash": "00" * 32},
}


@pytest.mark.parametrize("change", TAMPERING.values(), ids=TAMPERING.keys())
def test_verify_names_the_entry_whose_row_was_tampered_with(db, change):
    """The test database has no append-only triggers, so a row can be rewritten
    here the way someone with direct database access could."""
    target = _record_some()[1]
    assert ledger.verify().ok
    LedgerEntry.objects.filter(pk=target.pk).update(**change)
    result = ledger.verify()
    assert not result.ok
    assert all(problem.startswith(f"entry #{target.pk} (index {target.index}):") for problem in result.problems)


def test_a_consistently_rewritten_entry_is_caught_by_the_stored_nodes_and_an_earlier_tree_head(db):
    target = _record_some()[0]
    head = ledger.tree_head()
    data = ledger.canonical_leaf(kind="passkey.added", actor="user:1", subject="passkey:8", payload={},
                                 recorded_at=target.recorded_at.isoformat())
    LedgerEntry.objects.filter(pk=target.pk).update(
        subject="passkey:8", payload={}, leaf=data, leaf_hash=leaf_hash(data).hex()
    )
    result = ledger.verify(trusted_head=head)
    assert any(f"#{target.pk} (index {target.index})" in problem for problem in result.problems)
    assert f"the first {head['size']} entries no longer have the trusted root {head['root']}" in result.problems


def test_a_deleted_entry_leaves_its_index_missing(db):
    entries = _record_some()
    LedgerEntry.objects.filter(pk=entries[-1].pk).delete()
    assert f"index {entries[-1].index} is missing: its entry was deleted" in ledger.verify().problems


def _migrate(var_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "INFRASIM_VAR_DIR": str(var_dir)}
    env.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    )


def test_a_migrated_database_refuses_to_update_or_delete_ledger_entries(tmp_path):
    _migrate(tmp_path, "migrate", "--noinput")
    database = sqlite3.connect(tmp_path / "infrasim.sqlite3")
    database.execute(
        'INSERT INTO forensics_ledgerentry ("index", recorded_at, kind, actor, subject, payload, leaf, leaf_version, '
        "leaf_hash) VALUES (0, '2026-01-01', 'k', 'system', 's', '{}', x'7b7d', 1, 'ab')"
    )
    database.commit()
    for statement in ("UPDATE forensics_ledgerentry SET kind = 'rewritten'", "DELETE FROM forensics_ledgerentry"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            database.execute(statement)
    assert database.execute("SELECT kind FROM forensics_ledgerentry").fetchall() == [("k",)]


def test_rows_from_before_leaf_bytes_are_rebased_and_the_rebase_is_recorded(tmp_path):
    _migrate(tmp_path, "migrate", "forensics", "0002", "--noinput")
    database = sqlite3.connect(tmp_path / "infrasim.sqlite3")
    old_hashes = [hashlib.sha256(f"old {i}".encode()).digest() for i in range(2)]
    database.executemany(
        "INSERT INTO forensics_ledgerentry (recorded_at, kind, actor, subject, payload, leaf_hash) VALUES (?, ?, ?, ?, ?, ?)",
        [
            ("2026-01-01 10:00:00.250000", "passkey.added", "user:1", "passkey:1", '{"name": "Phone"}', old_hashes[0].hex()),
            ("2026-01-02 11:30:00", "token.revoked", "user:1", "token:4", "{}", old_hashes[1].hex()),
        ],
    )
    database.commit()
    database.close()

    _migrate(tmp_path, "migrate", "--noinput")

    database = sqlite3.connect(tmp_path / "infrasim.sqlite3")
    rows = database.execute(
        "SELECT kind, subject, leaf, leaf_version, leaf_hash FROM forensics_ledgerentry ORDER BY id"
    ).fetchall()
    assert [(kind, subject, version) for kind, subject, _, version, _ in rows] == [
        ("passkey.added", "passkey:1", 0),
        ("token.revoked", "token:4", 0),
        ("ledger.rebased", "ledger:forensics", 1),
    ]
    first = json.loads(rows[0][2])
    assert first == {
        "kind": "passkey.added",
        "actor": "user:1",
        "subject": "passkey:1",
        "payload": {"name": "Phone"},
        "recorded_at": "2026-01-01T10:00:00.250000+00:00",
    }
    for _, _, leaf, _, stored_hash in rows:
        assert hashlib.sha256(b"\x00" + leaf).hexdigest() == stored_hash
    assert json.loads(rows[2][2])["payload"] == {"entries": 2, "previous_root": merkle_root(old_hashes).hex()}
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        database.execute("UPDATE forensics_ledgerentry SET kind = 'rewritten'")

    check = "from forensics import ledger; r = ledger.verify(); print(r.ok, r.size, r.problems)"
    assert _migrate(tmp_path, "shell", "-c", check).stdout.strip().splitlines()[-1] == "True 3 []"


def test_ledger_verify_prints_the_head_and_fails_on_a_rewritten_history(db):
    for n in range(3):
        ledger.record(kind="test.event", actor="system", subject=f"thing:{n}", payload={"n": n})
    out = io.StringIO()
    call_command("ledger_verify", stdout=out)
    head = ledger.tree_head()
    assert out.getvalue().splitlines()[0] == f"size {head['size']} root {head['root']}"

    # The suite's database has no append-only triggers, so history can be
    # "rewritten" here, consistently (hash and leaf together), and caught.
    entry = LedgerEntry.objects.order_by("index").first()
    forged = ledger.canonical_leaf(kind="test.event", actor="system", subject="thing:0", payload={"n": 99},
                                   recorded_at=entry.recorded_at.isoformat())
    LedgerEntry.objects.filter(pk=entry.pk).update(leaf=forged, payload={"n": 99}, leaf_hash=leaf_hash(forged).hex())
    errors = io.StringIO()
    with pytest.raises(CommandError, match="does not verify"):
        call_command("ledger_verify", "--size", str(head["size"]), "--root", head["root"], stdout=io.StringIO(),
                     stderr=errors)
    assert f"#{entry.pk} (index 0)" in errors.getvalue()
    assert f"the first {head['size']} entries no longer have the trusted root {head['root']}" in errors.getvalue()


def test_ledger_verify_wants_size_and_root_together(db):
    with pytest.raises(CommandError, match="go together"):
        call_command("ledger_verify", "--size", "3", stdout=io.StringIO())
