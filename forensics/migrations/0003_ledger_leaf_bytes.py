"""Keep the exact bytes of every leaf, and stop overwriting recorded_at.

Until now recorded_at was auto_now_add, which replaced the time record() had
hashed, so no stored leaf could be recomputed. Existing rows are re-based:
their leaf is rebuilt from the row as it stands and marked leaf_version=0,
and one `ledger.rebased` event records how many there were and the root they
had, so an old tree head can still be matched to this change. The
append-only triggers are dropped for the rewrite and installed again after.
"""

import hashlib
import json

from django.db import migrations, models
from django.utils import timezone

from forensics.append_only import drop_append_only_triggers, install_append_only_triggers
from forensics.merkle import merkle_root

REBASED = 0
RECORDED = 1


def _leaf(kind, actor, subject, payload, recorded_at) -> bytes:
    # The leaf encoding as of this migration, frozen here.
    return json.dumps(
        {"kind": kind, "actor": actor, "subject": subject, "payload": payload, "recorded_at": recorded_at},
        sort_keys=True,
        separators=(",", ":"),
        allow_nan=False,
    ).encode()


def _leaf_hash(data: bytes) -> str:
    return hashlib.sha256(b"\x00" + data).hexdigest()


def drop_triggers(apps, schema_editor):
    drop_append_only_triggers(schema_editor.connection.cursor(), schema_editor.connection.vendor)


def install_triggers(apps, schema_editor):
    install_append_only_triggers(schema_editor.connection.cursor(), schema_editor.connection.vendor)


def rebase(apps, schema_editor):
    LedgerEntry = apps.get_model("forensics", "LedgerEntry")
    entries = LedgerEntry.objects.using(schema_editor.connection.alias).order_by("id")
    previous = [bytes.fromhex(h) for h in entries.values_list("leaf_hash", flat=True)]
    if not previous:
        return
    for entry in entries.iterator():
        data = _leaf(entry.kind, entry.actor, entry.subject, entry.payload, entry.recorded_at.isoformat())
        entries.filter(pk=entry.pk).update(leaf=data, leaf_hash=_leaf_hash(data), leaf_version=REBASED)
    recorded_at = timezone.now()
    payload = {"entries": len(previous), "previous_root": merkle_root(previous).hex()}
    data = _leaf("ledger.rebased", "system", "ledger:forensics", payload, recorded_at.isoformat())
    entries.create(
        kind="ledger.rebased",
        actor="system",
        subject="ledger:forensics",
        payload=payload,
        recorded_at=recorded_at,
        leaf=data,
        leaf_version=RECORDED,
        leaf_hash=_leaf_hash(data),
    )


class Migration(migrations.Migration):
    dependencies = [("forensics", "0002_ledger_append_only")]

    operations = [
        migrations.RunPython(drop_triggers, install_triggers),
        migrations.AddField(
            model_name="ledgerentry",
            name="leaf",
            field=models.BinaryField(default=b"", help_text="The canonical JSON that was hashed."),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="ledgerentry",
            name="leaf_version",
            field=models.PositiveSmallIntegerField(
                choices=[
                    (0, "re-based by migration: rebuilt from the row, the first hash is lost"),
                    (1, "the bytes hashed when the event was recorded"),
                ],
                default=1,
            ),
        ),
        migrations.AlterField(
            model_name="ledgerentry",
            name="recorded_at",
            field=models.DateTimeField(db_index=True),
        ),
        migrations.RunPython(rebase, migrations.RunPython.noop),
        migrations.RunPython(install_triggers, drop_triggers),
    ]
