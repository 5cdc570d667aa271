"""Verify an evidence bundle the way a third party would, with the standalone
verifier (forensics/offline_verify.py): nothing here reads the database, so
the result is exactly what someone without InfraSim gets. Exits 1 naming the
check that failed."""

from django.core.management.base import BaseCommand, CommandError

from forensics import offline_verify


class Command(BaseCommand):
    help = "Verify a forensic evidence bundle (and its memory dump) offline."

    def add_arguments(self, parser):
        parser.add_argument("bundle", help="the evidence bundle (JSON)")
        parser.add_argument("dump", nargs="?", help="the memory dump the bundle attests")
        parser.add_argument("--log-key", help="the transparency log's published verifier key (name+hash+key)")
        parser.add_argument("--operator-key", help="the operator's published key ID (hex) or Ed25519 key (base64)")

    def handle(self, *args, bundle, dump=None, log_key=None, operator_key=None, **options):
        try:
            report = offline_verify.verify_file(bundle, dump, log_key=log_key, operator_key=operator_key)
        except offline_verify.VerificationFailed as failed:
            for line in offline_verify.outcome_lines(failed.report):
                self.stdout.write(line)
            raise CommandError(f"FAILED {failed.check}: {failed.message}") from None
        for line in offline_verify.outcome_lines(report):
            self.stdout.write(line)
