"""The database itself refuses UPDATE and DELETE on the ledger, so no code
path (admin, shell, a bug) can rewrite history."""

from django.db import migrations

TABLE = "forensics_ledgerentry"

SQLITE = [
    f"CREATE TRIGGER ledger_no_update BEFORE UPDATE ON {TABLE} BEGIN SELECT RAISE(ABORT, 'ledger is append-only'); END;",
    f"CREATE TRIGGER ledger_no_delete BEFORE DELETE ON {TABLE} BEGIN SELECT RAISE(ABORT, 'ledger is append-only'); END;",
]
SQLITE_REVERSE = ["DROP TRIGGER IF EXISTS ledger_no_update;", "DROP TRIGGER IF EXISTS ledger_no_delete;"]

POSTGRES = [
    """CREATE OR REPLACE FUNCTION ledger_refuse_change() RETURNS trigger AS $$
    BEGIN RAISE EXCEPTION 'ledger is append-only'; END; $$ LANGUAGE plpgsql;""",
    f"CREATE TRIGGER ledger_no_update BEFORE UPDATE OR DELETE ON {TABLE} FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();",
    f"CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON {TABLE} FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();",
]
POSTGRES_REVERSE = [
    f"DROP TRIGGER IF EXISTS ledger_no_update ON {TABLE};",
    f"DROP TRIGGER IF EXISTS ledger_no_truncate ON {TABLE};",
    "DROP FUNCTION IF EXISTS ledger_refuse_change();",
]


def _run(statements_by_vendor):
    def run(apps, schema_editor):
        for statement in statements_by_vendor.get(schema_editor.connection.vendor, []):
            schema_editor.execute(statement)

    return run


class Migration(migrations.Migration):
    dependencies = [("forensics", "0001_initial")]

    operations = [
        migrations.RunPython(
            _run({"sqlite": SQLITE, "postgresql": POSTGRES}),
            _run({"sqlite": SQLITE_REVERSE, "postgresql": POSTGRES_REVERSE}),
        )
    ]
