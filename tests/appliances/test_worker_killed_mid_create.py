"""A worker dies (SIGKILL) in the middle of creating an appliance: the
broker hands the job to the next worker, which finishes it with exactly one
domain and no stray files; deleting then leaves nothing behind.

The first worker is killed at a known point: its disk and seed are made and
it waits on libvirt, whose socket (for it) is a black hole that accepts and
never answers. The next worker finds the host's real libvirt."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from celery import Celery
from django.conf import settings

from appliances import hypervisor, jobs, services
from appliances.models import Appliance, Host, Operation
from tests import database
from tests.appliances.conftest import TEMPLATE, ensure_catalog
from tests.people import person

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "host.killed-worker"
VISIBILITY_TIMEOUT = 3

pytestmark = pytest.mark.timeout(1200)


def private_broker_url() -> str:
    # Its own Redis database: the suite's in-process worker never sees these jobs.
    return settings.REDIS_URL.rsplit("/", 1)[0] + "/8"


def start_worker(queue: str = QUEUE, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {
        **os.environ,
        **(extra_env or {}),
        "DATABASE_URL": database.url_for_subprocess(),
        "REDIS_URL": private_broker_url(),
        "CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
        "CELERY_RESTORE_INTERVAL": "1",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "infrasim_site", "worker", "-Q", queue, "--pool", "solo",
         "--without-mingle", "--without-gossip", "--loglevel", "WARNING"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )


def stop(worker: subprocess.Popen | None) -> None:
    if worker is not None and worker.poll() is None:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=20)


class BlackHoleLibvirt:
    """A Unix socket that accepts connections and never answers."""

    def __init__(self, directory: Path):
        self.path = directory / "black-hole-sock"
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(self.path))
        self.server.listen()
        self.connected = threading.Event()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def uri(self) -> str:
        return f"qemu+unix:///session?socket={self.path}"

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            self.held.append(connection)
            self.connected.set()

    def close(self) -> None:
        self.server.close()
        for connection in self.held:
            connection.close()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_create_whose_worker_was_killed_ends_with_one_domain_and_no_orphans(transactional_db, libvirt_hosts, tmp_path):
    ensure_catalog()
    fixture_host = libvirt_hosts.first
    fixture_host.storage_dir.mkdir(mode=0o700, exist_ok=True)
    os.chown(fixture_host.storage_dir, fixture_host.uid, fixture_host.gid)
    black_hole = BlackHoleLibvirt(tmp_path)
    host = Host.objects.create(
        name="killed", libvirt_uri=black_hole.uri, queue=QUEUE, acceleration="tcg", vcpus=2, memory_mib=2048, disk_gib=20,
        storage_dir=str(fixture_host.storage_dir), image_cache_dir=str(settings.IMAGE_CACHE_DIR),
    )
    appliance = services.appliance_create(actor=person("kim"), name="victim", template=TEMPLATE, memory_mib=256)
    # The service queued the job on the suite's broker, where nothing serves
    # this queue; the workers below take it from their private broker.
    redis.Redis.from_url(settings.REDIS_URL).delete(QUEUE)
    job = Operation.objects.get(appliance=appliance, kind="create")
    redis.Redis.from_url(private_broker_url()).flushdb()

    first = start_worker()
    second = None
    try:
        sender = Celery(broker=private_broker_url(), set_as_current=False)
        sender.conf.broker_transport_options = {"visibility_timeout": VISIBILITY_TIMEOUT}
        sender.send_task(Operation.task_name, args=[job.pk], queue=QUEUE)
        # Killed while it provisions: the linked clone and the seed are made,
        # and it waits for libvirt.
        assert black_hole.connected.wait(900), "the first worker never reached libvirt"
        paths = jobs.paths_on(host, appliance)
        assert paths.disk.exists() and paths.seed.exists()
        assert Appliance.objects.get(pk=appliance.pk).status == "provisioning"
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        assert Operation.objects.get(pk=job.pk).status == "running"

        Host.objects.filter(pk=host.pk).update(libvirt_uri=fixture_host.uri)
        second = start_worker()
        wait_for(lambda: Operation.objects.get(pk=job.pk).status in ("succeeded", "failed"), 120,
                 "the redelivered job", interval=0.2)
    finally:
        stop(first)
        stop(second)
        black_hole.close()
        redis.Redis.from_url(private_broker_url()).flushdb()

    job.refresh_from_db()
    assert job.status == "succeeded", job.last_error
    appliance.refresh_from_db()
    assert appliance.status == "booting"
    conn = fixture_host.connect()
    try:
        ours = [d for d in hypervisor.list_domains(conn) if d["name"] == appliance.domain_name]
    finally:
        conn.close()
    assert len(ours) == 1, "exactly one domain"
    directory = jobs.paths_on(host, appliance).directory
    assert sorted(p.name for p in directory.iterdir()) in (["disk.qcow2", "seed.iso", "serial.log"],
                                                         ["disk.qcow2", "seed.iso"]), "stray files"

    services.appliance_delete(actor=appliance.owner, appliance_id=appliance.pk)
    redis.Redis.from_url(settings.REDIS_URL).delete(QUEUE)
    jobs.run_operation(Operation.objects.get(appliance=appliance, kind="delete").pk)
    assert not Appliance.objects.filter(pk=appliance.pk).exists()
    conn = fixture_host.connect()
    try:
        assert appliance.domain_name not in [d["name"] for d in hypervisor.list_domains(conn)]
    finally:
        conn.close()
    assert not directory.exists(), "files left behind"
