"""SQL that makes the ledger's tables refuse UPDATE and DELETE (and TRUNCATE
on PostgreSQL). Used by the migrations; kept here so the tests can name it.

Each table has triggers (and on PostgreSQL a function) of its own, so one
table's can be dropped and installed again without touching the others. The
entry table keeps the names the first migrations gave it."""

from __future__ import annotations

from typing import Iterable

TABLE = "forensics_ledgerentry"

#: Every append-only table of the ledger, with the prefix of its triggers' names.
TABLES = {
    TABLE: "ledger",
    "forensics_ledgernode": "ledger_node",
    "forensics_ledgercheckpoint": "ledger_checkpoint",
}


def _install(table: str, vendor: str) -> list[str]:
    prefix = TABLES[table]
    refusal = f"'{table} is append-only'"
    if vendor == "sqlite":
        return [
            f"CREATE TRIGGER {prefix}_no_update BEFORE UPDATE ON {table} BEGIN SELECT RAISE(ABORT, {refusal}); END;",
            f"CREATE TRIGGER {prefix}_no_delete BEFORE DELETE ON {table} BEGIN SELECT RAISE(ABORT, {refusal}); END;",
        ]
    if vendor == "postgresql":
        return [
            f"CREATE OR REPLACE FUNCTION {prefix}_refuse_change() RETURNS trigger AS $$ "
            f"BEGIN RAISE EXCEPTION {refusal}; END; $$ LANGUAGE plpgsql;",
            f"CREATE TRIGGER {prefix}_no_update BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {prefix}_refuse_change();",
            f"CREATE TRIGGER {prefix}_no_truncate BEFORE TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {prefix}_refuse_change();",
        ]
    return []


def _drop(table: str, vendor: str) -> list[str]:
    prefix = TABLES[table]
    if vendor == "sqlite":
        return [f"DROP TRIGGER IF EXISTS {prefix}_no_update;", f"DROP TRIGGER IF EXISTS {prefix}_no_delete;"]
    if vendor == "postgresql":
        return [
            f"DROP TRIGGER IF EXISTS {prefix}_no_update ON {table};",
            f"DROP TRIGGER IF EXISTS {prefix}_no_truncate ON {table};",
            f"DROP FUNCTION IF EXISTS {prefix}_refuse_change();",
        ]
    return []


def _existing(cursor) -> list[str]:
    """The ledger tables this database has: migrations before 0004 made only
    the entry table, and they call these functions too."""
    present = set(cursor.db.introspection.table_names(cursor))
    return [table for table in TABLES if table in present]


def install_append_only_triggers(cursor, vendor: str, tables: Iterable[str] | None = None) -> None:
    """Install the triggers on `tables` (default: every ledger table that exists)."""
    for table in _existing(cursor) if tables is None else tables:
        for statement in _install(table, vendor):
            cursor.execute(statement)


def drop_append_only_triggers(cursor, vendor: str, tables: Iterable[str] | None = None) -> None:
    """Drop the triggers of `tables` (default: every ledger table that exists)."""
    for table in _existing(cursor) if tables is None else tables:
        for statement in _drop(table, vendor):
            cursor.execute(statement)
