"""The evidence store: content-addressed files under EVIDENCE_DIR, read-only
once written.

    EVIDENCE_DIR/sha256/ab/abcdef...     the dumps, mode 0400, named by their SHA-256
    EVIDENCE_DIR/staging/                dumps being written (acquisition-<id>.partial)

A dump is placed by a rename within one filesystem, so a reader never sees
half a file; the same bytes acquired twice are stored once.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from django.conf import settings

_SHA256 = re.compile(r"[0-9a-f]{64}")


def root() -> Path:
    return Path(settings.EVIDENCE_DIR)


def staging_dir() -> Path:
    directory = root() / "staging"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return directory


def staging_path(acquisition_id: int) -> Path:
    """Where an acquisition's dump is written: a fixed name, so a retry after
    a killed worker finds and removes what the last attempt left."""
    return staging_dir() / f"acquisition-{acquisition_id}.dump"


def clear_staging(acquisition_id: int) -> list[str]:
    removed = []
    for leftover in staging_dir().glob(f"acquisition-{acquisition_id}.*"):
        leftover.unlink(missing_ok=True)
        removed.append(leftover.name)
    return removed


def location(sha256: str) -> Path:
    if not _SHA256.fullmatch(sha256):
        raise ValueError(f"not a SHA-256: {sha256!r}")
    return root() / "sha256" / sha256[:2] / sha256


def place(staged: Path, sha256: str) -> Path:
    """Move a finished dump into the store, read-only. Identical bytes
    already stored are kept and the new copy dropped."""
    final = location(sha256)
    final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if final.exists():
        staged.unlink()
    else:
        os.chmod(staged, stat.S_IRUSR)
        os.replace(staged, final)
        directory = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    return final


def relative(path: Path) -> str:
    return str(path.relative_to(root()))
