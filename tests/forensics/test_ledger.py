import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import transaction

from forensics import ledger
from forensics.models import LedgerEntry

ROOT = Path(__file__).resolve().parents[2]


def reference_mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, written as the RFC states it (recursive split)."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1 << ((n - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + reference_mth(leaves[:k]) + reference_mth(leaves[k:])).digest()


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 33])
def test_merkle_root_matches_rfc6962_definition(size):
    data = [f"entry {i}".encode() for i in range(size)]
    assert ledger.merkle_root([ledger.leaf_hash(d) for d in data]) == reference_mth(data)


def test_recorded_events_change_the_tree_head(db):
    before = ledger.tree_head()
    entry = ledger.record(kind="test.event", actor="system", subject="thing:1", payload={"n": 1})
    after = ledger.tree_head()
    assert after["size"] == before["size"] + 1
    assert after["root"] != before["root"]
    assert len(entry.leaf_hash) == 64


def test_an_event_rolls_back_with_the_change_it_records(db):
    count = LedgerEntry.objects.count()
    with pytest.raises(RuntimeError), transaction.atomic():
        ledger.record(kind="test.event", actor="system", subject="thing:2")
        raise RuntimeError("the change failed")
    assert LedgerEntry.objects.count() == count


def test_a_migrated_database_refuses_to_update_or_delete_ledger_entries(tmp_path):
    env = {**os.environ, "INFRASIM_VAR_DIR": str(tmp_path)}
    env.pop("DATABASE_URL", None)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env, check=True, capture_output=True
    )
    database = sqlite3.connect(tmp_path / "infrasim.sqlite3")
    database.execute(
        "INSERT INTO forensics_ledgerentry (recorded_at, kind, actor, subject, payload, leaf_hash) "
        "VALUES ('2026-01-01', 'k', 'system', 's', '{}', 'ab')"
    )
    database.commit()
    for statement in ("UPDATE forensics_ledgerentry SET kind = 'rewritten'", "DELETE FROM forensics_ledgerentry"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            database.execute(statement)
    assert database.execute("SELECT kind FROM forensics_ledgerentry").fetchall() == [("k",)]
