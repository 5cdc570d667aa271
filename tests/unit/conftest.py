"""The fast tier: pure modules only, no database, Redis, servers or browser.

Nothing here requests `db`, `live` or the worker fixtures, and pytest-django
refuses database access to any test that does not ask for it, so a test that
strays into the ORM fails instead of quietly slowing the tier down.
Run it alone: `.venv/bin/python -m pytest tests/unit -q`.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

VECTORS = Path(__file__).parent / "vectors" / "rfc6962"


def load_vectors(kind: str) -> list[tuple[str, dict]]:
    """The RFC 6962 proof cases of `kind` (inclusion or consistency), as
    (name, case) with the base64 hashes decoded to bytes."""
    cases = []
    for path in sorted((VECTORS / kind).rglob("*.json")):
        case = json.loads(path.read_text())
        for key in ("root", "root1", "root2", "leafHash"):
            if key in case:
                case[key] = base64.b64decode(case[key] or "")
        case["proof"] = [base64.b64decode(p) for p in case.get("proof") or []]
        cases.append((str(path.relative_to(VECTORS / kind)), case))
    return cases


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/unit/" in str(item.path) and {"db", "transactional_db", "live"} & set(item.fixturenames):
            raise pytest.UsageError(f"{item.nodeid}: the unit tier must not use the database or servers")
