"""Memory acquisition end to end, with a real VM under TCG: an operator
captures a ready appliance's memory through the API; the dump holds what the
guest had in RAM; the bundle verifies offline with `forensics_verify`, and
one flipped byte in the dump, the envelope, the proof or the checkpoint
fails it, naming what failed. Then a worker is killed mid-dump: nothing is
registered as complete, the partial file goes, the guest runs on, and the
redelivered job finishes the capture."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import signal
import time
from pathlib import Path

import pytest
import redis
from celery import Celery
from django.core.management import CommandError, call_command

from appliances.models import Host, Operation
from forensics import evidence, ledger
from forensics.models import Acquisition
from tests.appliances.conftest import TEMPLATE, ssh_public_key
from tests.appliances.test_lifecycle_with_real_vms import (  # noqa: F401 (fixtures)
    BOOT_TIMEOUT,
    hosts,
    in_guest,
    uplink,
    wait_for,
)
from tests.appliances.test_worker_killed_mid_create import VISIBILITY_TIMEOUT, private_broker_url, start_worker, stop
from tests.people import client_for, person

pytestmark = pytest.mark.timeout(2400)
API = "/api/forensics"
KILL_QUEUE = "host.killed-worker"


def wait_for_capture(api, acquisition_id: int, timeout: float = 600) -> tuple[dict, list[int]]:
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while True:
        body = api.get(f"{API}/acquisitions/{acquisition_id}").json()
        seen.append(body["progress"])
        if body["status"] in ("complete", "failed"):
            assert body["status"] == "complete", body["last_error"]
            return body, seen
        assert time.monotonic() < deadline, f"capture still {body['status']} after {timeout} s"
        time.sleep(0.1)


def download(api, path: str, target: Path) -> Path:
    response = api.get(path)
    assert response.status_code == 200, response.content[:300]
    with open(target, "wb") as out:
        for chunk in (response.streaming_content if response.streaming else [response.content]):
            out.write(chunk)
    return target


def verify(bundle: Path, dump: Path | None = None) -> str:
    from io import StringIO

    out = StringIO()
    call_command("forensics_verify", str(bundle), *([str(dump)] if dump else []), stdout=out, stderr=StringIO())
    return out.getvalue()


def refused(bundle: Path, dump: Path | None = None) -> str:
    with pytest.raises(CommandError) as failed:
        verify(bundle, dump)
    return str(failed.value)


def flipped(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


def test_capture_a_running_vm_and_verify_it_offline(hosts, libvirt_hosts, mesh, worker, live, tmp_path, settings):
    settings.EVIDENCE_DIR = str(tmp_path / "evidence")
    alice, olga = person("alice"), person("olga", operator=True)
    alice_api, olga_api = client_for(alice), client_for(olga)
    created = alice_api.post("/api/meshnet/appliances", {
        "name": "suspect", "template": TEMPLATE, "vcpus": 1, "memory_mib": 1024, "disk_gib": 3,
        "ssh_authorized_keys": [ssh_public_key(tmp_path)],
    }, content_type="application/json")
    assert created.status_code == 201, created.content
    suspect = wait_for(created.json()["id"], "ready", BOOT_TIMEOUT)
    # Something only the guest's RAM holds: a file on tmpfs.
    marker = f"infrasim-memory-marker-{secrets.token_hex(8)}"
    assert in_guest(suspect, "sh", "-c", f"echo {marker} > /dev/shm/marker")[0] == 0

    # --- the capture ------------------------------------------------------------------------
    asked = olga_api.post(f"{API}/acquisitions", {"appliance": suspect.pk, "case_ref": "INC-42",
                                                  "reason": "beaconing to an unknown host"},
                          content_type="application/json")
    assert asked.status_code == 202, asked.content
    body, progress = wait_for_capture(olga_api, asked.json()["id"])
    assert progress == sorted(progress) and progress[-1] == 100
    custody = body["custody"]
    assert custody["appliance"]["vm_uuid"] == str(suspect.domain_uuid)
    assert custody["appliance"]["host"] == suspect.host.name
    assert custody["acquisition"]["format"] == "elf" and custody["acquisition"]["ram_bytes"] == 1024 * 2**20
    assert custody["acquisition"]["qemu_version"] and custody["acquisition"]["libvirt_version"]
    paused = custody["acquisition"]["guest_paused"]
    assert custody["acquisition"]["started_at"] <= paused["from"] <= paused["until"] <= custody["acquisition"]["finished_at"]
    assert custody["operator"]["handle"] == "olga" and custody["case"]["reference"] == "INC-42"

    dump = download(olga_api, f"{API}/acquisitions/{body['id']}/evidence", tmp_path / "memory.elf")
    data = dump.read_bytes()
    assert data[:4] == b"\x7fELF" and len(data) == body["size"]
    assert hashlib.sha256(data).hexdigest() == body["sha256"]
    assert marker.encode() in data, "the dump does not hold the guest's memory"
    stored = Path(Acquisition.objects.get(pk=body["id"]).evidence_path)
    assert stored.name == body["sha256"] and stored.stat().st_mode & 0o777 == 0o400
    assert in_guest(suspect, "cat", "/dev/shm/marker")[1].strip() == marker, "the guest runs on after the capture"

    bundle_path = download(olga_api, f"{API}/acquisitions/{body['id']}/bundle", tmp_path / "bundle.json")
    printed = verify(bundle_path, dump)
    assert "FAILED" not in printed and body["sha256"] in printed

    # --- one flipped byte, anywhere, fails it, naming what ----------------------------------
    bad_dump = tmp_path / "bad.elf"
    bad_dump.write_bytes(flipped(data, len(data) // 2))
    assert "subject digest" in refused(bundle_path, bad_dump)
    bundle = json.loads(bundle_path.read_text())

    def mutated(change) -> Path:
        copy = json.loads(json.dumps(bundle))
        change(copy)
        path = tmp_path / f"mutated-{secrets.token_hex(4)}.json"
        path.write_text(json.dumps(copy))
        return path

    def flip_b64(value: str, at: int = 5) -> str:
        return base64.b64encode(flipped(base64.b64decode(value), at)).decode()

    envelope = mutated(lambda b: b["dsseEnvelope"].update(payload=flip_b64(b["dsseEnvelope"]["payload"], 40)))
    assert "signature" in refused(envelope, dump)
    proof = bundle["tlogEntry"]["inclusionProof"]
    if proof["hashes"]:
        bad_proof = mutated(lambda b: b["tlogEntry"]["inclusionProof"]["hashes"].__setitem__(0, flip_b64(proof["hashes"][0])))
        assert "inclusion proof" in refused(bad_proof, dump)
    note = proof["checkpoint"]
    bad_note = mutated(lambda b: b["tlogEntry"]["inclusionProof"].update(
        checkpoint=note.replace(note.split("\n")[2], flip_b64(note.split("\n")[2], 0))))
    assert "checkpoint" in refused(bad_note, dump)
    bad_signature = mutated(lambda b: b["tlogEntry"]["inclusionProof"].update(
        checkpoint=note[:-10] + ("A" if note[-10] != "A" else "B") + note[-9:]))
    assert "checkpoint" in refused(bad_signature, dump)

    # --- a worker killed mid-dump ---------------------------------------------------------
    host = Host.objects.get(pk=suspect.host_id)
    Host.objects.filter(pk=host.pk).update(queue=KILL_QUEUE)
    try:
        asked = olga_api.post(f"{API}/acquisitions", {"appliance": suspect.pk, "case_ref": "INC-43",
                                                      "reason": "second look"}, content_type="application/json")
        assert asked.status_code == 202, asked.content
        acquisition = Acquisition.objects.get(pk=asked.json()["id"])
        # Sent on the suite's broker, where nothing serves this queue: the
        # workers below take it from their private broker instead.
        redis.Redis.from_url(settings.REDIS_URL).delete(KILL_QUEUE)
        redis.Redis.from_url(private_broker_url()).flushdb()
        env = {"EVIDENCE_DIR": settings.EVIDENCE_DIR}
        first = start_worker(queue=KILL_QUEUE, extra_env=env)
        second = None
        try:
            sender = Celery(broker=private_broker_url(), set_as_current=False)
            sender.conf.broker_transport_options = {"visibility_timeout": VISIBILITY_TIMEOUT}
            sender.send_task(Operation.task_name, args=[acquisition.operation_id], queue=KILL_QUEUE)
            partial = evidence.staging_path(acquisition.pk).with_name(evidence.staging_path(acquisition.pk).name + ".partial")
            deadline = time.monotonic() + 300
            while not (partial.exists() and partial.stat().st_size > 0):
                assert time.monotonic() < deadline, "the first worker never started dumping"
                time.sleep(0.002)
            os.killpg(first.pid, signal.SIGSTOP)  # mid-dump, held there
            acquisition.refresh_from_db()
            assert acquisition.phase == "dumping" and not acquisition.sha256
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=10)
            assert Acquisition.objects.get(pk=acquisition.pk).status == "dumping"
            assert in_guest(suspect, "cat", "/dev/shm/marker")[1].strip() == marker, "the guest runs on"

            second = start_worker(queue=KILL_QUEUE, extra_env=env)
            redone, _ = wait_for_capture(olga_api, acquisition.pk, timeout=300)
        finally:
            stop(first)
            stop(second)
            redis.Redis.from_url(private_broker_url()).flushdb()
    finally:
        Host.objects.filter(pk=host.pk).update(queue=host.queue)

    assert not list(Path(settings.EVIDENCE_DIR, "staging").iterdir()), "partial files left behind"
    job = Operation.objects.get(pk=acquisition.operation_id)
    assert job.status == "succeeded", job.last_error
    again = download(olga_api, f"{API}/acquisitions/{redone['id']}/evidence", tmp_path / "again.elf")
    assert hashlib.sha256(again.read_bytes()).hexdigest() == redone["sha256"]
    assert marker.encode() in again.read_bytes()
    verify(download(olga_api, f"{API}/acquisitions/{redone['id']}/bundle", tmp_path / "again.json"), again)
    attested = [e for e in ledger.entries_visible_to(olga).filter(kind="forensics.attestation")
                if e.subject == f"acquisition:{acquisition.pk}"]
    assert len(attested) == 1, "one attestation per capture, however many attempts"
    call_command("ledger_verify", stdout=open(os.devnull, "w"))
