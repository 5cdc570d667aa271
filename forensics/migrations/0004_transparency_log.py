"""Make the ledger a transparency log: every entry gets an index, the tree's
complete subtrees are stored (LedgerNode), a one-row head keeps its size,
root and compact range, signed checkpoints are kept, and each entry names
the user it concerns.

Existing entries keep their bytes and their order: indexes follow the ids.
Their `concerns` comes from the actor label, as record() does it. The entry
triggers are dropped for the fill (on SQLite, making `index` unique rebuilds
the table, which would lose them anyway) and installed again after, now on
all three append-only tables.
"""

from django.db import migrations, models
from django.utils import timezone

from forensics.append_only import TABLE, TABLES, drop_append_only_triggers, install_append_only_triggers
from forensics.ledger import ACTOR_USER, CompactRange

BATCH = 5000


def drop_entry_triggers(apps, schema_editor):
    drop_append_only_triggers(schema_editor.connection.cursor(), schema_editor.connection.vendor, [TABLE])


def install_entry_triggers(apps, schema_editor):
    install_append_only_triggers(schema_editor.connection.cursor(), schema_editor.connection.vendor, [TABLE])


def drop_all_triggers(apps, schema_editor):
    drop_append_only_triggers(schema_editor.connection.cursor(), schema_editor.connection.vendor, TABLES)


def install_all_triggers(apps, schema_editor):
    install_append_only_triggers(schema_editor.connection.cursor(), schema_editor.connection.vendor, TABLES)


def number_entries(apps, schema_editor):
    quote = schema_editor.connection.ops.quote_name
    table = quote(TABLE)
    # One statement that both SQLite (>= 3.33) and PostgreSQL run.
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET {quote('index')} = numbered.position "
            f"FROM (SELECT id, ROW_NUMBER() OVER (ORDER BY id) - 1 AS position FROM {table}) AS numbered "
            f"WHERE {table}.id = numbered.id"
        )


def fill_concerns(apps, schema_editor):
    LedgerEntry = apps.get_model("forensics", "LedgerEntry")
    entries = LedgerEntry.objects.using(schema_editor.connection.alias)
    for actor in entries.values_list("actor", flat=True).distinct().iterator():
        match = ACTOR_USER.fullmatch(actor)
        if match:
            entries.filter(actor=actor).update(concerns=int(match[1]))


def build_tree(apps, schema_editor):
    alias = schema_editor.connection.alias
    LedgerEntry = apps.get_model("forensics", "LedgerEntry")
    LedgerNode = apps.get_model("forensics", "LedgerNode")
    LedgerHead = apps.get_model("forensics", "LedgerHead")
    tree = CompactRange()
    nodes = []
    hashes = LedgerEntry.objects.using(alias).order_by("index").values_list("leaf_hash", flat=True)
    for hex_hash in hashes.iterator(chunk_size=BATCH):
        completed = tree.append(bytes.fromhex(hex_hash))
        nodes.extend(LedgerNode(level=level, index=index, hash=node) for level, index, node in completed)
        if len(nodes) >= BATCH:
            LedgerNode.objects.using(alias).bulk_create(nodes)
            nodes = []
    LedgerNode.objects.using(alias).bulk_create(nodes)
    LedgerHead.objects.using(alias).create(id=1, size=tree.size, root=tree.root(), frontier=tree.pack())


class Migration(migrations.Migration):
    dependencies = [("forensics", "0003_ledger_leaf_bytes")]

    operations = [
        migrations.RunPython(drop_entry_triggers, install_entry_triggers),
        migrations.AddField(
            model_name="ledgerentry",
            name="index",
            field=models.BigIntegerField(editable=False, null=True),
        ),
        migrations.AddField(
            model_name="ledgerentry",
            name="concerns",
            field=models.BigIntegerField(
                blank=True, db_index=True, help_text="Id of the user this entry concerns (not hashed).", null=True
            ),
        ),
        migrations.AlterModelOptions(
            name="ledgerentry",
            options={"ordering": ["index"], "verbose_name_plural": "ledger entries"},
        ),
        migrations.CreateModel(
            name="LedgerNode",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("level", models.PositiveSmallIntegerField()),
                ("index", models.BigIntegerField()),
                ("hash", models.BinaryField(max_length=32)),
            ],
            options={
                "constraints": [models.UniqueConstraint(fields=("level", "index"), name="ledger_node_position")],
            },
        ),
        migrations.CreateModel(
            name="LedgerHead",
            fields=[
                ("id", models.PositiveSmallIntegerField(default=1, editable=False, primary_key=True, serialize=False)),
                ("size", models.BigIntegerField(default=0)),
                ("root", models.BinaryField(max_length=32)),
                ("frontier", models.BinaryField(default=b"")),
            ],
            options={
                "constraints": [models.CheckConstraint(condition=models.Q(id=1), name="ledger_head_single_row")],
            },
        ),
        migrations.CreateModel(
            name="LedgerCheckpoint",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("size", models.BigIntegerField(unique=True)),
                ("root", models.BinaryField(max_length=32)),
                ("note", models.TextField()),
                ("created_at", models.DateTimeField(default=timezone.now, editable=False)),
            ],
            options={"ordering": ["size"]},
        ),
        migrations.RunPython(number_entries, migrations.RunPython.noop),
        migrations.RunPython(fill_concerns, migrations.RunPython.noop),
        migrations.RunPython(build_tree, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="ledgerentry",
            name="index",
            field=models.BigIntegerField(
                editable=False, help_text="Position in the log, from 0, never reused.", unique=True
            ),
        ),
        migrations.RunPython(install_all_triggers, drop_all_triggers),
    ]
