"""Real services for the suite: the ASGI app served by uvicorn on a real
socket, and a Celery worker consuming from the real Redis broker."""

from __future__ import annotations

import threading
import time

import pytest
import uvicorn
from django.conf import settings

from tests.bootstrap import LIVE_SERVER_PORT

# Session fixtures for the real provisioning servers: knot, synapse, s3.
# Shared fixtures: real provisioning servers, people, Chromium, WireGuard namespaces.
pytest_plugins = ["tests.servers", "tests.people", "tests.browser", "tests.wireguard", "tests.hypervisors"]


class LiveServer:
    def __init__(self, port: int):
        self.port = port
        self.url = f"http://localhost:{port}"
        self.ws_url = f"ws://localhost:{port}"

    def __str__(self) -> str:
        return self.url


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """Transactional tests empty every table between tests, which the
    append-only ledger refuses; so the test database goes without the
    triggers, and tests/forensics checks them on a database migrated apart."""
    from django.db import connection

    from forensics.append_only import drop_append_only_triggers

    with django_db_blocker.unblock():
        with connection.cursor() as cursor:
            drop_append_only_triggers(cursor, connection.vendor)


@pytest.fixture(scope="session")
def asgi_server(django_db_setup, django_db_blocker):
    """The whole ASGI application (HTTP and WebSocket) on localhost, in a
    thread of this process so that it shares the test database."""
    from infrasim_site.asgi import application

    config = uvicorn.Config(
        application, host="127.0.0.1", port=LIVE_SERVER_PORT, log_level="warning", ws="websockets-sansio", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    with django_db_blocker.unblock():
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        yield LiveServer(LIVE_SERVER_PORT)
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture()
def live(asgi_server, transactional_db):
    """A live server test: data must be committed for the server to see it."""
    return asgi_server


# The hypervisor hosts of the appliance tests (tests/hypervisors.py); their
# jobs run on these queues, as they would on each host's own worker.
TEST_HOST_QUEUES = ["host.hv1", "host.hv2"]


@pytest.fixture(scope="session")
def celery_worker_thread(django_db_setup, django_db_blocker):
    """A real Celery worker on the real Redis broker, consuming every app queue."""
    from celery.contrib.testing.worker import start_worker

    from infrasim_site.celery import app

    with django_db_blocker.unblock():
        with start_worker(
            app,
            pool="threads",
            # Appliance jobs hold a thread while an image builds or a VM
            # migrates; the gateway's syncs must not wait behind them.
            concurrency=4,
            queues=[*settings.CELERY_APP_QUEUES, *TEST_HOST_QUEUES],
            perform_ping_check=False,
            shutdown_timeout=20,
            loglevel="WARNING",
        ) as worker:
            yield worker


@pytest.fixture()
def worker(celery_worker_thread, transactional_db):
    return celery_worker_thread


@pytest.fixture()
def backends(settings, knot, synapse, s3):
    """Point every provisioning backend at its real server, with quick retries."""
    for key, value in {**knot.settings(), **synapse.settings(), **s3.settings()}.items():
        setattr(settings, key, value)
    settings.PROVISIONING_BACKOFF_SECONDS = 0
    settings.PROVISIONING_MAX_ATTEMPTS = 3
    return {"knot": knot, "synapse": synapse, "s3": s3}
