"""Check the whole ledger: every leaf recomputed from its stored bytes, every
leaf agreeing with its row, and the Merkle root; optionally against a tree
head saved earlier (--size N --root HEX), which also catches rows deleted or
consistently rewritten since. Exits 1 when anything is wrong."""

from django.core.management.base import BaseCommand, CommandError

from forensics import ledger


class Command(BaseCommand):
    help = "Verify the append-only ledger's leaves and Merkle root."

    def add_arguments(self, parser):
        parser.add_argument("--size", type=int, help="size of a tree head recorded earlier")
        parser.add_argument("--root", help="root (hex) of that tree head")

    def handle(self, *args, size=None, root=None, **options):
        if (size is None) != (root is None):
            raise CommandError("--size and --root go together (a tree head printed by an earlier run)")
        trusted = {"size": size, "root": root} if size is not None else None
        result = ledger.verify(trusted_head=trusted)
        for problem in result.problems:
            self.stderr.write(problem)
        self.stdout.write(f"size {result.size} root {result.root}")
        if not result.ok:
            raise CommandError(f"the ledger does not verify: {len(result.problems)} problem(s)")
