"""The appliances API on the request side: creating (placement, quotas, the
mesh peer, the queued job), every kind of bad input answered with a clear
4xx and nothing half-made, actions refused in the wrong state, phone home."""

from __future__ import annotations

import pytest

from appliances import services
from appliances.models import Appliance, Host, Operation, Snapshot
from forensics.models import LedgerEntry
from mesh.models import Peer
from tests.appliances.conftest import TEMPLATE, make_host, ssh_public_key
from tests.concurrency import race
from tests.people import client_for, person

API = "/api/meshnet"


def create(client, **body):
    payload = {"name": "web", "template": TEMPLATE, **body}
    return client.post(f"{API}/appliances", payload, content_type="application/json")


@pytest.fixture()
def alice(db):
    return person("alice")


@pytest.fixture()
def alice_client(alice):
    return client_for(alice)


def nothing_made():
    return not Appliance.objects.exists() and not Peer.objects.exists() and not Operation.objects.exists()


def test_creating_an_appliance_places_it_gives_it_a_mesh_peer_and_queues_its_build(
    alice, alice_client, idle_host, tmp_path
):
    key = ssh_public_key(tmp_path)
    response = create(alice_client, vcpus=2, memory_mib=1024, disk_gib=8, ssh_authorized_keys=[key],
                      user_data="#cloud-config\npackages: [htop]\n")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "pending"
    assert body["host"] == idle_host.name and body["template"] == TEMPLATE
    assert (body["vcpus"], body["memory_mib"], body["disk_gib"]) == (2, 1024, 8)
    assert body["ssh_authorized_keys"] == [key]
    appliance = Appliance.objects.get(pk=body["id"])
    assert appliance.peer.owner == alice and appliance.peer.status == "active"
    assert body["mesh_ipv4"] == appliance.peer.ipv4 and body["mesh_ipv6"] == appliance.peer.ipv6
    assert body["operation"]["kind"] == "create" and body["operation"]["status"] == "pending"
    assert appliance.wg_private_key_sealed and "PrivateKey" not in appliance.wg_private_key_sealed
    assert LedgerEntry.objects.filter(kind="appliances.appliance.created", subject=f"appliance:{appliance.pk}").exists()

    listed = alice_client.get(f"{API}/appliances").json()["results"]
    assert [a["name"] for a in listed] == ["web"]


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"template": "no-such-os"}, "template", "No template named"),
        ({"template": ""}, "template", "Choose a template"),
        ({"vcpus": 0}, "vcpus", "At least 1"),
        ({"vcpus": 10_000}, "vcpus", "At most"),
        ({"vcpus": "two"}, "vcpus", "whole number"),
        ({"memory_mib": 64}, "memory_mib", "At least"),
        ({"memory_mib": 10**9}, "memory_mib", "At most"),
        ({"disk_gib": 0}, "disk_gib", "At least"),
        ({"disk_gib": 1}, "disk_gib", "At least 2"),  # below the image's own size
        ({"disk_gib": 10**7}, "disk_gib", "At most"),
        ({"name": ""}, "name", "required"),
        ({"name": "a\u202eb"}, "name", "Text-direction"),
        ({"ssh_authorized_keys": ["ssh-ed25519 AAAAnotakey"]}, "ssh_authorized_keys", "key 1"),
        ({"ssh_authorized_keys": ["hello"]}, "ssh_authorized_keys", ""),
        ({"user_data": "#cloud-config\nhostname: 12\n"}, "user_data", "hostname: 12 is not of type 'string'"),
        ({"user_data": "packages: [htop]\n"}, "user_data", "#cloud-config"),
        ({"user_data": "#cloud-config\nruncmd: [\n"}, "user_data", "line"),
        ({"user_data": "#cloud-config\nphone_home: {url: 'http://evil'}\n"}, "user_data", "phone_home"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_nothing_is_made(alice_client, idle_host, body, field, words):
    response = create(alice_client, **body)
    assert response.status_code == 400, response.content
    data = response.json()
    assert field in data, data
    assert words in " ".join(data[field]), data
    assert nothing_made()


def test_quotas_hold_per_user(alice_client, idle_host, settings):
    settings.APPLIANCE_QUOTA_COUNT = 2
    settings.APPLIANCE_QUOTA_MEMORY_MIB = 1536
    first = create(alice_client, name="one", memory_mib=512)
    assert first.status_code == 201, first.content
    over_memory = create(alice_client, name="two", memory_mib=1536)
    assert over_memory.status_code == 409
    assert "memory" in over_memory.json()["memory_mib"][0] and over_memory.json()["code"] == "quota"
    assert create(alice_client, name="two", memory_mib=512).status_code == 201
    over_count = create(alice_client, name="three", memory_mib=256)
    assert over_count.status_code == 409 and over_count.json()["code"] == "quota"
    assert Appliance.objects.count() == 2 and Peer.objects.count() == 2


def test_a_second_appliance_of_the_same_name_is_refused(alice_client, idle_host):
    assert create(alice_client).status_code == 201
    again = create(alice_client)
    assert again.status_code == 409 and "already" in again.json()["name"][0]


def test_no_host_with_room_is_a_409_and_nothing_is_made(alice_client, db):
    make_host("tiny", vcpus=1, memory_mib=512, disk_gib=4)
    response = create(alice_client, vcpus=2)
    assert response.status_code == 409 and response.json()["code"] == "no_capacity"
    assert nothing_made()


def test_placement_prefers_the_host_with_more_free_memory(alice_client, db):
    make_host("small", memory_mib=2048)
    make_host("large", memory_mib=8192)
    assert create(alice_client).json()["host"] == "large"


def test_concurrent_creates_never_overcommit_a_host(transactional_db):
    make_host("two-slots", vcpus=2, memory_mib=1024, disk_gib=100)
    people = [person(f"racer{i}") for i in range(5)]

    def make(user):
        return lambda: services.appliance_create(actor=user, name="vm", template=TEMPLATE, vcpus=1, memory_mib=512)

    outcomes = race([make(user) for user in people])
    made = [o for o in outcomes if isinstance(o, Appliance)]
    refused = [o for o in outcomes if not isinstance(o, Appliance)]
    assert len(made) == 2, outcomes
    assert all(getattr(o, "code", None) == "no_capacity" for o in refused), outcomes
    host = Host.objects.get(name="two-slots")
    used = services.host_usage(host)
    assert used.vcpus <= host.vcpus and used.memory_mib <= host.memory_mib
    assert Peer.objects.filter(status="active").count() == 2, "a refused create left its mesh peer behind"


def test_concurrent_creates_never_overrun_a_users_quota(transactional_db, settings):
    settings.APPLIANCE_QUOTA_COUNT = 2
    make_host("roomy")
    user = person("greedy")
    outcomes = race([
        (lambda i=i: services.appliance_create(actor=user, name=f"vm{i}", template=TEMPLATE, memory_mib=256))
        for i in range(5)
    ])
    assert sum(isinstance(o, Appliance) for o in outcomes) == 2, outcomes
    assert Appliance.objects.filter(owner=user).count() == 2


def test_another_users_appliance_is_not_found(alice_client, idle_host):
    appliance_id = create(alice_client).json()["id"]
    mallory = client_for(person("mallory"))
    assert mallory.get(f"{API}/appliances/{appliance_id}").status_code == 404
    assert mallory.post(f"{API}/appliances/{appliance_id}/start").status_code == 404
    assert mallory.get(f"{API}/appliances").json()["results"] == []


def test_actions_in_the_wrong_state_are_refused_with_the_reason(alice_client, idle_host):
    appliance_id = create(alice_client).json()["id"]
    start = alice_client.post(f"{API}/appliances/{appliance_id}/start")
    assert start.status_code == 409 and "pending" in start.json()["status"][0]
    Appliance.objects.filter(pk=appliance_id).update(status="ready")
    busy = alice_client.post(f"{API}/appliances/{appliance_id}/reboot")
    assert busy.status_code == 409 and busy.json()["code"] == "busy", "the create job is still queued"


def test_deleting_while_the_build_is_queued_cancels_it_and_queues_the_delete(alice_client, idle_host):
    appliance_id = create(alice_client).json()["id"]
    response = alice_client.delete(f"{API}/appliances/{appliance_id}")
    assert response.status_code == 202 and response.json()["status"] == "deleting"
    kinds = dict(Operation.objects.filter(appliance_id=appliance_id).values_list("kind", "status"))
    assert kinds == {"create": "failed", "delete": "pending"}
    again = alice_client.delete(f"{API}/appliances/{appliance_id}")
    assert again.status_code == 202 and Operation.objects.filter(kind="delete").count() == 1


def test_phone_home_is_a_one_time_url_that_marks_the_appliance_ready(alice, idle_host, client):
    appliance = services.appliance_create(actor=alice, name="web", template=TEMPLATE)
    Appliance.objects.filter(pk=appliance.pk).update(status="booting")
    url = services.phone_home_url(appliance)
    path = url[url.index("/api/"):]
    assert client.post(path.replace(path.rsplit("/", 1)[1], "0" * 64)).status_code == 404
    assert Appliance.objects.get(pk=appliance.pk).status == "booting"
    assert client.post(path, {"instance_id": appliance.instance_id, "hostname": "web"}).status_code == 204
    appliance.refresh_from_db()
    assert appliance.status == "ready" and appliance.ready_at is not None
    Appliance.objects.filter(pk=appliance.pk).update(status="booting")
    client.post(path)
    assert Appliance.objects.get(pk=appliance.pk).status == "booting", "a used phone-home URL moves nothing"


def test_snapshots_say_what_they_can_hold(alice_client, idle_host):
    appliance_id = create(alice_client).json()["id"]
    Appliance.objects.filter(pk=appliance_id).update(status="ready")
    Operation.objects.filter(appliance_id=appliance_id).update(status="succeeded")
    listing = alice_client.get(f"{API}/appliances/{appliance_id}/snapshots").json()
    assert listing["supports"]["disk"] is True and listing["supports"]["memory"] is True
    assert listing["results"] == []
    bad = alice_client.post(f"{API}/appliances/{appliance_id}/snapshots", {"name": "a b"}, content_type="application/json")
    assert bad.status_code == 400 and "name" in bad.json()
    queued = alice_client.post(f"{API}/appliances/{appliance_id}/snapshots", {"name": "before-upgrade"},
                               content_type="application/json")
    assert queued.status_code == 202 and queued.json()["kind"] == "snapshot_create"
    Snapshot.objects.create(appliance_id=appliance_id, name="taken")
    Operation.objects.filter(appliance_id=appliance_id).update(status="succeeded")
    Appliance.objects.filter(pk=appliance_id).update(status="ready")
    migrate = alice_client.post(f"{API}/appliances/{appliance_id}/migrate", {}, content_type="application/json")
    assert migrate.status_code == 409, migrate.content


def test_the_templates_list_shows_each_hosts_cache(alice_client, idle_host):
    templates = alice_client.get(f"{API}/templates").json()
    slugs = [t["slug"] for t in templates]
    assert {"debian-bookworm-local", "debian-12", "ubuntu-24.04", "alpine-3.20"} <= set(slugs)
    assert any(s.startswith("kali") for s in slugs)
    local = next(t for t in templates if t["slug"] == TEMPLATE)
    assert local["source"] == "built here"
    assert local["cache"] == [{"host": idle_host.name, "status": "absent", "detail": "", "digest": "", "size": 0,
                               "error": ""}]

