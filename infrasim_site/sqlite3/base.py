"""Django's SQLite backend, with the database file private to its owner.

sqlite3.connect creates a missing file with the process umask (usually 0644:
world-readable sessions, sealed secrets, the ledger). The file is created
0600 before SQLite opens it; SQLite gives its -wal, -shm and -journal files
the mode of the database file, so they are 0600 too. A file left readable by
an earlier version is narrowed on the next connection.
"""

import os
import stat

from django.db.backends.sqlite3 import base


def _private_file(name: str) -> None:
    if name == ":memory:" or name.startswith("file:"):
        return
    try:
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return
    except FileExistsError:
        pass
    if stat.S_IMODE(os.stat(name).st_mode) & 0o077:
        os.chmod(name, 0o600)


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params):
        _private_file(str(conn_params["database"]))
        return super().get_new_connection(conn_params)
