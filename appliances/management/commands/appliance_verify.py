"""manage.py appliance_verify ARCHIVE: check an appliance archive offline.

Every member is hashed as it streams and compared with the manifest; the
member names, types and sizes, the disk's qcow2 header and the manifest's
schema are checked too. Nothing is written anywhere. Exit status 0 when the
archive is sound, 1 (with the reason on stderr) when it is not."""

from __future__ import annotations

import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from appliances import archive, exports


class Command(BaseCommand):
    help = "Verify an appliance archive (appliance-<id>.tar.gz) against its manifest, offline."

    def add_arguments(self, parser):
        parser.add_argument("archive", help="path to the archive, or - for standard input")
        parser.add_argument("--sha256sum", action="store_true",
                            help="also print the manifest's hashes in `sha256sum -c` form")

    def handle(self, *args, **options):
        path = options["archive"]
        try:
            if path == "-":
                verified = archive.verify(sys.stdin.buffer, limits=exports.import_limits())
            else:
                if not Path(path).is_file():
                    raise CommandError(f"{path}: no such file")
                verified = archive.verify_file(Path(path), limits=exports.import_limits())
        except archive.ArchiveInvalid as exc:
            raise CommandError(f"{path}: NOT VALID: {exc}") from None
        manifest = verified.manifest
        meta = manifest["appliance"]
        for name, digest in verified.files.items():
            self.stdout.write(f"{digest.sha256}  {digest.size:>12}  {name}: OK")
        self.stdout.write(
            f"{path}: OK: {meta['name']} ({meta['template']}, {meta['vcpus']} vCPU, {meta['memory_mib']} MiB, "
            f"{meta['disk_gib']} GiB), made {manifest['created_at']}, "
            f"secrets {'included' if manifest['secrets_included'] else 'not included'}, "
            f"archive sha256 {verified.sha256}"
        )
        if options["sha256sum"]:
            self.stdout.write(archive.sha256sum_lines(manifest["files"]), ending="")
