"""Check the whole transparency log: every leaf recomputed from its stored
bytes and agreeing with its row, indexes from 0 without a gap, every stored
node and the head recomputed from the leaves, and every stored checkpoint's
signature and root. Optionally also against a tree head saved earlier
(--size N --root HEX). Prints the head; exits 1 when anything is wrong."""

from django.core.management.base import BaseCommand, CommandError

from forensics import ledger


class Command(BaseCommand):
    help = "Verify the transparency log: leaves, indexes, stored nodes, head and signed checkpoints."

    def add_arguments(self, parser):
        parser.add_argument("--size", type=int, help="size of a tree head recorded earlier")
        parser.add_argument("--root", help="root (hex) of that tree head")

    def handle(self, *args, size=None, root=None, **options):
        if (size is None) != (root is None):
            raise CommandError("--size and --root go together (a tree head printed by an earlier run)")
        trusted = {"size": size, "root": root.lower()} if size is not None else None
        result = ledger.verify(trusted_head=trusted)
        for problem in result.problems:
            self.stderr.write(problem)
        self.stdout.write(f"size {result.size} root {result.root}")
        self.stdout.write(f"{result.checkpoints} signed checkpoint(s) checked")
        if not result.ok:
            raise CommandError(f"the log does not verify: {len(result.problems)} problem(s)")
