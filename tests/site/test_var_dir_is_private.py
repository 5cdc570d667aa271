"""The var/ directory and the SQLite database (with its WAL files) are
readable by the service's own user only."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Opens a connection and writes, so the -wal and -shm files exist while the
# modes are read.
REPORT_MODES = """
import json, os, stat
from django.conf import settings
from django.db import connection
with connection.cursor() as cursor:
    cursor.execute("CREATE TABLE IF NOT EXISTS probe (x)")
    cursor.execute("INSERT INTO probe VALUES (1)")
name = settings.DATABASES["default"]["NAME"]
print(json.dumps({suffix: oct(stat.S_IMODE(os.stat(name + suffix).st_mode)) for suffix in ("", "-wal", "-shm") if os.path.exists(name + suffix)}))
"""


def _manage(var_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "INFRASIM_VAR_DIR": str(var_dir)}
    env.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_migrating_creates_a_private_var_dir_and_database(tmp_path):
    var_dir = tmp_path / "var"
    _manage(var_dir, "migrate", "--noinput")
    assert _mode(var_dir) == 0o700
    assert _mode(var_dir / "infrasim.sqlite3") == 0o600
    modes = json.loads(_manage(var_dir, "shell", "-c", REPORT_MODES).stdout.strip().splitlines()[-1])
    assert modes == {"": "0o600", "-wal": "0o600", "-shm": "0o600"}


def test_an_existing_readable_var_dir_and_database_are_narrowed(tmp_path):
    var_dir = tmp_path / "var"
    var_dir.mkdir(mode=0o755)
    var_dir.chmod(0o755)
    database = var_dir / "infrasim.sqlite3"
    database.touch()
    database.chmod(0o644)
    _manage(var_dir, "migrate", "--noinput")
    assert _mode(var_dir) == 0o700
    assert _mode(database) == 0o600
