"""/api/forensics/: requesting a capture, who may, what comes back, the
passkey co-signature, the published keys and the public log endpoints. The
dump itself is made by real VMs in test_acquisition_with_real_vm.py; here
the job's last step runs on a file (tests/forensics/acquisitions.py)."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from django.test import Client

from appliances.models import Operation
from forensics import ledger, offline_verify
from forensics.models import Acquisition, SigningKey
from tests.forensics.acquisitions import a_complete_acquisition, a_running_appliance
from tests.passkey_api import bearer, create_token
from tests.people import client_for, person, signed_in_person

pytestmark = pytest.mark.django_db
API = "/api/forensics"


def post(client, path, body, **extra):
    return client.post(path, body, content_type="application/json", **extra)


def capture_body(appliance_id, **overrides) -> dict:
    return {"appliance": appliance_id, "case_ref": "INC-7", "reason": "suspected intrusion", **overrides}


def body_of(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


# --- requesting -------------------------------------------------------------------------------


def test_an_operator_captures_any_running_appliance_as_a_job_on_its_host():
    owner, olga = person("owner"), person("olga", operator=True)
    appliance = a_running_appliance(owner)
    response = post(client_for(olga), f"{API}/acquisitions", capture_body(appliance.pk))
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "pending" and body["progress"] == 0 and body["requested_by"] == "olga"
    job = Operation.objects.get(acquisition__pk=body["id"])
    assert job.kind == "memory_dump" and job.queue_name == appliance.host.queue
    assert job.params == {"format": "elf", "acquisition": body["id"]}
    requested = ledger.entries_visible_to(olga).filter(kind="forensics.acquisition.requested").get()
    assert requested.payload == {"appliance": appliance.pk, "case_ref": "INC-7", "format": "elf"}
    # The owner reads in the log that their appliance's memory is being
    # captured, by whom; the case stays the operator's.
    owners = ledger.entries_visible_to(owner)
    assert owners.filter(kind="appliances.appliance.memory_dump_requested", actor=f"operator:{olga.pk}").exists()
    assert not owners.filter(kind__startswith="forensics.").exists()


def test_owners_capture_their_own_only_where_policy_allows(settings):
    owner = person("owner")
    appliance = a_running_appliance(owner)
    refused = post(client_for(owner), f"{API}/acquisitions", capture_body(appliance.pk))
    assert refused.status_code == 403
    assert refused.json()["code"] == "forensics_operators_only" and "appliance" in refused.json()
    settings.FORENSICS_OWNERS_MAY_ACQUIRE = True
    assert post(client_for(owner), f"{API}/acquisitions", capture_body(appliance.pk)).status_code == 202


def test_another_users_appliance_is_not_found_even_where_owners_may_capture(settings):
    settings.FORENSICS_OWNERS_MAY_ACQUIRE = True
    appliance = a_running_appliance(person("owner"))
    response = post(client_for(person("mallory")), f"{API}/acquisitions", capture_body(appliance.pk))
    assert response.status_code == 404
    assert response.json()["appliance"] == ["No such appliance."]
    assert not Acquisition.objects.exists()


@pytest.mark.parametrize("overrides, field, code", [
    ({"case_ref": ""}, "case_ref", None),
    ({"reason": "   "}, "reason", None),
    ({"format": "raw"}, "format", "invalid_choice"),
    ({"appliance": "x"}, "appliance", "not_found"),
    ({"case_ref": "a\u202eb"}, "case_ref", None),
])
def test_bad_input_names_the_field_and_queues_nothing(overrides, field, code):
    olga = person("olga", operator=True)
    appliance = a_running_appliance(person("owner"))
    response = post(client_for(olga), f"{API}/acquisitions", capture_body(appliance.pk, **overrides))
    assert 400 <= response.status_code < 500 and field in response.json(), response.content
    if code:
        assert response.json()["code"] == code
    assert not Acquisition.objects.exists()
    assert not Operation.objects.filter(kind="memory_dump").exists()


def test_a_stopped_or_busy_appliance_is_refused_with_the_reason():
    olga = client_for(person("olga", operator=True))
    appliance = a_running_appliance(person("owner"))
    assert post(olga, f"{API}/acquisitions", capture_body(appliance.pk)).status_code == 202
    busy = post(olga, f"{API}/acquisitions", capture_body(appliance.pk))
    assert busy.status_code == 409 and busy.json()["code"] == "busy"
    Operation.objects.filter(appliance=appliance).update(status="succeeded")
    appliance.__class__.objects.filter(pk=appliance.pk).update(status="stopped")
    stopped = post(olga, f"{API}/acquisitions", capture_body(appliance.pk))
    assert stopped.status_code == 409 and stopped.json()["code"] == "invalid_state"
    assert "running appliance" in stopped.json()["status"][0]
    assert Acquisition.objects.count() == 1


def test_a_read_only_token_cannot_capture():
    olga = signed_in_person("Olga", operator=True)
    appliance = a_running_appliance(person("owner"))
    token = create_token(olga, "read", scope="read")["token"]
    assert post(Client(), f"{API}/acquisitions", capture_body(appliance.pk), **bearer(token)).status_code == 403
    write = create_token(olga, "write", scope="write")["token"]
    assert post(Client(), f"{API}/acquisitions", capture_body(appliance.pk), **bearer(write)).status_code == 202


# --- reading, downloading, verifying ----------------------------------------------------------


def test_a_complete_capture_serves_its_evidence_with_range_and_a_bundle_that_verifies(tmp_path):
    olga = person("olga", operator=True)
    acquisition = a_complete_acquisition(olga, a_running_appliance(person("owner")))
    api = client_for(olga)
    detail = api.get(f"{API}/acquisitions/{acquisition.pk}").json()
    assert detail["status"] == "complete" and detail["progress"] == 100 and detail["log_index"] is not None
    assert detail["custody"]["case"] == {"reference": "CASE-1", "reason": "matrix"}
    assert detail["key_id"] == SigningKey.objects.get(user=olga).key_id and detail["cosigned"] is False

    whole = api.get(f"{API}/acquisitions/{acquisition.pk}/evidence")
    data = body_of(whole)
    assert whole.status_code == 200 and hashlib.sha256(data).hexdigest() == acquisition.sha256
    assert whole["ETag"] == f'"{acquisition.sha256}"'
    part = api.get(f"{API}/acquisitions/{acquisition.pk}/evidence", HTTP_RANGE="bytes=10-19")
    assert part.status_code == 206 and body_of(part) == data[10:20]

    bundle = api.get(f"{API}/acquisitions/{acquisition.pk}/bundle").json()
    dump = tmp_path / "dump"
    dump.write_bytes(data)
    report = offline_verify.verify_bundle(bundle, dump, log_key=api.get(f"{API}/log/key").content.decode().strip())
    assert report.cosigned is False and report.subject_sha256 == acquisition.sha256
    dump.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(offline_verify.VerificationFailed) as failed:
        offline_verify.verify_bundle(bundle, dump)
    assert failed.value.check == "subject digest"


def test_evidence_of_an_unfinished_capture_is_a_conflict_not_a_half_file():
    olga = person("olga", operator=True)
    appliance = a_running_appliance(person("owner"))
    response = post(client_for(olga), f"{API}/acquisitions", capture_body(appliance.pk))
    got = client_for(olga).get(f"{API}/acquisitions/{response.json()['id']}/evidence")
    assert got.status_code == 409 and got.json()["code"] == "not_complete"


def test_captures_are_seen_by_operators_and_by_their_requester_only(settings):
    settings.FORENSICS_OWNERS_MAY_ACQUIRE = True
    owner, mallory, olga = person("owner"), person("mallory"), person("olga", operator=True)
    acquisition = a_complete_acquisition(owner)
    for who, expected in ((owner, 200), (olga, 200), (mallory, 404)):
        for suffix in ("", "/evidence", "/bundle"):
            response = client_for(who).get(f"{API}/acquisitions/{acquisition.pk}{suffix}")
            assert response.status_code == expected, (who, suffix)
            if expected == 404:
                assert acquisition.sha256.encode() not in body_of(response)
    assert [a["id"] for a in client_for(mallory).get(f"{API}/acquisitions").json()["results"]] == []
    assert Client().get(f"{API}/acquisitions/{acquisition.pk}/bundle").status_code == 401


def test_the_capture_outlives_its_appliance():
    olga = person("olga", operator=True)
    acquisition = a_complete_acquisition(olga)
    acquisition.appliance.delete()
    detail = client_for(olga).get(f"{API}/acquisitions/{acquisition.pk}").json()
    assert detail["status"] == "complete" and detail["appliance"] is None
    assert client_for(olga).get(f"{API}/acquisitions/{acquisition.pk}/bundle").status_code == 200


# --- the passkey co-signature -----------------------------------------------------------------


def test_the_requester_cosigns_with_a_passkey_and_the_bundle_carries_it(tmp_path):
    olga = signed_in_person("Olga", operator=True)
    acquisition = a_complete_acquisition(olga.user)
    options = olga.get(f"{API}/acquisitions/{acquisition.pk}/cosign").json()
    pae = offline_verify.pae(acquisition.envelope["payloadType"], base64.b64decode(acquisition.envelope["payload"]))
    expected = base64.urlsafe_b64encode(hashlib.sha256(pae).digest()).rstrip(b"=").decode()
    assert options["challenge"] == expected and options["userVerification"] == "required"
    signed = post(olga, f"{API}/acquisitions/{acquisition.pk}/cosign", {"credential": olga.device.get(options)})
    assert signed.status_code == 200, signed.content
    assert signed.json()["cosigned"] is True
    bundle = olga.get(f"{API}/acquisitions/{acquisition.pk}/bundle").json()
    report = offline_verify.verify_bundle(bundle)
    assert report.cosigned is True
    again = post(olga, f"{API}/acquisitions/{acquisition.pk}/cosign", {"credential": olga.device.get(options)})
    assert again.status_code == 409
    assert ledger.entries_visible_to(olga.user).filter(kind="forensics.attestation.cosigned").count() == 1


def test_an_assertion_over_another_attestation_is_refused():
    olga = signed_in_person("Olga", operator=True)
    first, second = a_complete_acquisition(olga.user), a_complete_acquisition(olga.user)
    options = olga.get(f"{API}/acquisitions/{first.pk}/cosign").json()
    refused = post(olga, f"{API}/acquisitions/{second.pk}/cosign", {"credential": olga.device.get(options)})
    assert refused.status_code == 400 and refused.json()["code"] == "invalid_assertion"
    assert post(olga, f"{API}/acquisitions/{second.pk}/cosign", {"credential": "nonsense"}).status_code == 400
    assert not Acquisition.objects.get(pk=second.pk).cosignature


def test_only_the_requester_cosigns_and_never_with_a_token():
    olga, oscar = signed_in_person("Olga", operator=True), signed_in_person("Oscar", operator=True)
    acquisition = a_complete_acquisition(olga.user)
    assert oscar.get(f"{API}/acquisitions/{acquisition.pk}/cosign").status_code == 404
    token = create_token(olga, "write", scope="write")["token"]
    assert Client().get(f"{API}/acquisitions/{acquisition.pk}/cosign", **bearer(token)).status_code == 403


# --- keys ----------------------------------------------------------------------------------------


def test_keys_are_published_and_a_rotated_key_still_verifies_its_bundles():
    olga = signed_in_person("Olga", operator=True)
    before = a_complete_acquisition(olga.user)
    old_key = SigningKey.objects.get(user=olga.user)
    rotated = post(olga, f"{API}/keys/rotate", {})
    assert rotated.status_code == 201 and rotated.json()["key_id"] != old_key.key_id
    published = {key["key_id"]: key for key in Client().get(f"{API}/keys").json()}
    assert published[old_key.key_id]["retired_at"] is not None
    assert published[rotated.json()["key_id"]]["retired_at"] is None
    assert base64.b64decode(published[old_key.key_id]["ed25519"]) == bytes(old_key.public_key)
    after = a_complete_acquisition(olga.user)
    assert after.signing_key.key_id == rotated.json()["key_id"]
    bundle = olga.get(f"{API}/acquisitions/{before.pk}/bundle").json()
    assert offline_verify.verify_bundle(bundle, operator_key=old_key.key_id).keyid == old_key.key_id


def test_a_person_rotates_only_their_own_key():
    alice, olga = signed_in_person("Alice"), signed_in_person("Olga", operator=True)
    refused = post(alice, f"{API}/keys/rotate", {"user": olga.user.pk})
    assert refused.status_code == 404 and "user" in refused.json()
    assert post(olga, f"{API}/keys/rotate", {"user": alice.user.pk}).status_code == 201
    assert SigningKey.objects.filter(user=alice.user, retired_at__isnull=True).count() == 1


# --- the public log ---------------------------------------------------------------------------


def test_the_log_endpoints_are_public_and_their_proofs_verify():
    olga = person("olga", operator=True)
    acquisition = a_complete_acquisition(olga)
    anonymous = Client()
    first = anonymous.get(f"{API}/log/checkpoint")
    assert first.status_code == 200 and first["Content-Type"].startswith("text/plain")
    vkey = anonymous.get(f"{API}/log/key").content.decode().strip()
    origin, size, root = offline_verify.parse_checkpoint(offline_verify.verify_note(first.content.decode(), vkey))
    assert origin == vkey.split("+")[0] and size == ledger.tree_head()["size"]

    proof = anonymous.get(f"{API}/log/proof/inclusion", {"index": acquisition.log_index, "tree_size": size}).json()
    leaf = offline_verify.leaf_hash(bytes(ledger.entry_at(acquisition.log_index).leaf))
    assert base64.b64decode(proof["leaf_hash"]) == leaf
    offline_verify.verify_inclusion(leaf=leaf, index=acquisition.log_index, size=size,
                                    proof=[base64.b64decode(h) for h in proof["hashes"]], root=root)

    a_complete_acquisition(olga)
    later = anonymous.get(f"{API}/log/checkpoint").content.decode()
    _, size2, root2 = offline_verify.parse_checkpoint(offline_verify.verify_note(later, vkey))
    consistency = anonymous.get(f"{API}/log/proof/consistency", {"first": size, "second": size2}).json()
    offline_verify.verify_consistency(size1=size, size2=size2, root1=root, root2=root2,
                                      proof=[base64.b64decode(h) for h in consistency["hashes"]])


@pytest.mark.parametrize("path, params, field", [
    ("inclusion", {"index": "x", "tree_size": 1}, "index"),
    ("inclusion", {"index": 0}, "tree_size"),
    ("inclusion", {"index": 5, "tree_size": 2}, "index"),
    ("inclusion", {"index": 0, "tree_size": 10**9}, "tree_size"),
    ("inclusion", {"index": -1, "tree_size": 1}, "index"),
    ("consistency", {"first": 2, "second": 1}, "first"),
    ("consistency", {"first": 0, "second": 1}, "first"),
    ("consistency", {"first": 1, "second": 10**9}, "second"),
])
def test_bad_proof_requests_name_the_parameter(path, params, field):
    a_complete_acquisition(person("olga", operator=True))
    response = Client().get(f"{API}/log/proof/{path}", params)
    assert response.status_code == 400 and field in response.json(), response.content


def test_entry_contents_are_for_operators_and_the_person_they_concern():
    alice, bob, olga = signed_in_person("Alice"), signed_in_person("Bob"), signed_in_person("Olga", operator=True)
    mine = client_for(alice.user).get(f"{API}/log/entries").json()["results"]
    assert mine and all(entry["actor"].endswith(f":{alice.user.pk}") for entry in mine)
    index = mine[0]["index"]
    assert client_for(bob.user).get(f"{API}/log/entries/{index}").status_code == 404
    assert client_for(olga.user).get(f"{API}/log/entries/{index}").status_code == 200
    assert Client().get(f"{API}/log/entries").status_code == 401
    entry = client_for(alice.user).get(f"{API}/log/entries/{index}").json()
    assert hashlib.sha256(b"\x00" + base64.b64decode(entry["leaf"])).hexdigest() == entry["leaf_hash"]
    assert json.loads(base64.b64decode(entry["leaf"]))["kind"] == entry["kind"]
