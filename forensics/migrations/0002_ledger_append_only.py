"""The database itself refuses UPDATE and DELETE on the ledger, so no code
path (admin, shell, a bug) can rewrite history."""

from django.db import migrations

from forensics.append_only import drop_append_only_triggers, install_append_only_triggers


def install(apps, schema_editor):
    install_append_only_triggers(schema_editor.connection.cursor(), schema_editor.connection.vendor)


def drop(apps, schema_editor):
    drop_append_only_triggers(schema_editor.connection.cursor(), schema_editor.connection.vendor)


class Migration(migrations.Migration):
    dependencies = [("forensics", "0001_initial")]

    operations = [migrations.RunPython(install, drop)]
