"""acks_late for real: a worker process dies (SIGKILL) in the middle of a
provisioning step; the broker hands the task to the next worker, which
redoes the step once, idempotently."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis
from celery import Celery
from django.conf import settings

from forensics.models import LedgerEntry
from identity.models import Identity, ProvisioningStep, User
from identity.handles import skeleton
from tests import database
from tests.identity.test_provisioning_with_real_servers import resolve

ROOT = Path(__file__).resolve().parents[2]
VISIBILITY_TIMEOUT = 3


class BlackHoleDns:
    """Accepts TCP connections and never answers: a DNS server that hangs."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self):
        self.sock.close()
        for conn in self.held:
            conn.close()


def private_broker_url() -> str:
    # Its own Redis database, so the suite's in-process worker never takes these tasks.
    return settings.REDIS_URL.rsplit("/", 1)[0] + "/7"


def start_worker(dns_port: int, knot) -> subprocess.Popen:
    env = {
        **os.environ,
        **{k: str(v) for k, v in knot.settings().items() if not isinstance(v, list)},
        "DNS_TARGET_A": "192.0.2.10",
        "DNS_TARGET_AAAA": "2001:db8::10",
        "DNS_PORT": str(dns_port),
        "DATABASE_URL": database.url_for_subprocess(),
        "REDIS_URL": private_broker_url(),
        "CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
        "CELERY_RESTORE_INTERVAL": "1",
    }
    for key in ("MATRIX_HOMESERVER_URL", "S3_ENDPOINT_URL"):
        env.pop(key, None)
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "infrasim_site", "worker", "-Q", "identity", "--pool", "solo",
         "--without-mingle", "--without-gossip", "--loglevel", "WARNING"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_step_whose_worker_was_killed_is_redone_once_by_the_next_worker(transactional_db, knot):
    user = User.objects.create_user(display_name="Kim Killed", signup_state="active")
    # A row, not identity_claim: a claim queues its steps on the suite's
    # broker, where the in-process worker could take them from this test.
    identity = Identity.objects.create(
        user=user, handle="killed-mid-step", handle_skeleton=skeleton("killed-mid-step"), status=Identity.Status.PENDING
    )
    step = ProvisioningStep.objects.create(identity=identity, kind="dns")

    # Leftovers of an earlier run (a message a killed worker held) must not
    # be handed to this run's workers.
    redis.Redis.from_url(private_broker_url()).flushdb()
    black_hole = BlackHoleDns()
    first = start_worker(black_hole.port, knot)
    second = None
    try:
        sender = Celery(broker=private_broker_url(), set_as_current=False)
        sender.conf.broker_transport_options = {"visibility_timeout": VISIBILITY_TIMEOUT}
        sender.send_task("identity.tasks.provision_step", args=[step.pk], queue="identity")
        # Killed once it is inside the backend call (claimed, its start
        # recorded, waiting on the black-hole DNS server), not in between.
        started = LedgerEntry.objects.filter(kind="identity.provisioning.dns.started", subject=f"identity:{identity.pk}")
        wait_for(started.exists, 60, "the first worker to start the step")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        assert ProvisioningStep.objects.get(pk=step.pk).status == "running"

        second = start_worker(knot.port, knot)
        wait_for(lambda: ProvisioningStep.objects.get(pk=step.pk).status == "succeeded", 90, "the redelivered step")
    finally:
        for worker in (first, second):
            if worker and worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)
                worker.wait(timeout=20)
        black_hole.close()

    step.refresh_from_db()
    assert step.attempts == 1, "the redelivery re-ran the claimed attempt instead of starting a new one"
    assert started.count() == 2, "run once by the killed worker and once more by the next"
    assert resolve(knot, "killed-mid-step.test.infrasim") == ["192.0.2.10"], "exactly one record, no duplicate"


def test_a_hanging_backend_holds_no_database_lock(transactional_db, knot, settings):
    """While one step waits on a DNS server that never answers, everyone
    else still writes: the backend call is outside any transaction."""
    for key, value in knot.settings().items():
        setattr(settings, key, value)
    black_hole = BlackHoleDns()
    settings.DNS_PORT = black_hole.port
    user = User.objects.create_user(display_name="Hana Hanging", signup_state="active")
    identity = Identity.objects.create(user=user, handle="hanging-dns", handle_skeleton=skeleton("hanging-dns"),
                                       status=Identity.Status.PENDING)
    step = ProvisioningStep.objects.create(identity=identity, kind="dns")
    from identity.provisioning import identity_provision_step
    from django.db import connection

    def run():
        try:
            identity_provision_step(step_id=step.pk)
        finally:
            connection.close()

    worker = threading.Thread(target=run)
    worker.start()
    try:
        wait_for(lambda: black_hole.held, 30, "the step to reach the DNS server")
        began = time.monotonic()
        User.objects.create_user(display_name="Someone Else", signup_state="active")
        assert time.monotonic() - began < 1, "a write waited for the hanging backend"
        assert worker.is_alive(), "the DNS call was expected to be still hanging"
    finally:
        worker.join(60)
        black_hole.close()
    step.refresh_from_db()
    assert step.status in ("retrying", "failed") and step.last_error
