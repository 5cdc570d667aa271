"""SQL that makes the ledger table refuse UPDATE and DELETE (and TRUNCATE on
PostgreSQL). Used by the migration; kept here so the tests can name it."""

TABLE = "forensics_ledgerentry"

INSTALL = {
    "sqlite": [
        f"CREATE TRIGGER ledger_no_update BEFORE UPDATE ON {TABLE} "
        "BEGIN SELECT RAISE(ABORT, 'ledger is append-only'); END;",
        f"CREATE TRIGGER ledger_no_delete BEFORE DELETE ON {TABLE} "
        "BEGIN SELECT RAISE(ABORT, 'ledger is append-only'); END;",
    ],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION ledger_refuse_change() RETURNS trigger AS $$ "
        "BEGIN RAISE EXCEPTION 'ledger is append-only'; END; $$ LANGUAGE plpgsql;",
        f"CREATE TRIGGER ledger_no_update BEFORE UPDATE OR DELETE ON {TABLE} "
        "FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();",
        f"CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON {TABLE} "
        "FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();",
    ],
}

DROP = {
    "sqlite": ["DROP TRIGGER IF EXISTS ledger_no_update;", "DROP TRIGGER IF EXISTS ledger_no_delete;"],
    "postgresql": [
        f"DROP TRIGGER IF EXISTS ledger_no_update ON {TABLE};",
        f"DROP TRIGGER IF EXISTS ledger_no_truncate ON {TABLE};",
        "DROP FUNCTION IF EXISTS ledger_refuse_change();",
    ],
}


def install_append_only_triggers(cursor, vendor: str) -> None:
    for statement in INSTALL.get(vendor, []):
        cursor.execute(statement)


def drop_append_only_triggers(cursor, vendor: str) -> None:
    for statement in DROP.get(vendor, []):
        cursor.execute(statement)
