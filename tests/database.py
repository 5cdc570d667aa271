from pathlib import Path
from urllib.parse import quote

from django.conf import settings


POSTGRES_SOCKET_DIR = Path("/var/run/postgresql")


def url_for_subprocess(*, other_network_namespace: bool = False) -> str:
    """DATABASE_URL of the test database, for a worker or command the test
    starts as a process of its own (SQLite file or PostgreSQL alike). A
    process in another network namespace has a loopback of its own, so a
    PostgreSQL on this host's loopback is reached through its Unix socket."""
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    credentials = quote(db.get("USER") or "")
    if db.get("PASSWORD"):
        credentials += ":" + quote(db["PASSWORD"])
    host = db.get("HOST") or "localhost"
    if other_network_namespace and host in {"localhost", "127.0.0.1", "::1"} and POSTGRES_SOCKET_DIR.is_dir():
        host = quote(str(POSTGRES_SOCKET_DIR), safe="")
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{credentials}@{host}{port}/{db['NAME']}"
