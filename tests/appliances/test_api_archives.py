"""Archives on the request side: who may export and download, the rule for
secrets (owner only; a token, or a passkey checked within 5 minutes), Range
downloads, imports refused with a clear 4xx and nothing left behind, and the
retention policy. The worker's side runs with real VMs in
test_archives_with_real_vms.py."""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

import pytest

from appliances import archive, exports
from appliances.models import Appliance, Archive, Operation
from identity.sessions import CHECKED_AT_KEY
from mesh.models import Peer
from tests.appliances.conftest import TEMPLATE
from tests.passkey_api import bearer, create_token
from tests.people import client_for, person, signed_in_person

API = "/api/meshnet"


@pytest.fixture(autouse=True)
def archive_dir(settings, tmp_path):
    settings.ARCHIVE_DIR = str(tmp_path / "archives")
    return Path(settings.ARCHIVE_DIR)


def ready_appliance(owner, name: str = "web", status: str = "ready") -> Appliance:
    appliance = exports.appliance_create(actor=owner, name=name, template=TEMPLATE)
    Operation.objects.filter(appliance=appliance).update(status="succeeded")
    Appliance.objects.filter(pk=appliance.pk).update(status=status)
    appliance.refresh_from_db()
    return appliance


def finished_archive(appliance: Appliance, body: bytes = b"archive bytes", *, secrets: bool = False,
                     directory: Path | None = None) -> Archive:
    directory = directory or exports.archive_directory(appliance.pk)
    directory.mkdir(parents=True, exist_ok=True)
    sha256 = hashlib.sha256(body).hexdigest()
    path = directory / f"{sha256}.tar.gz"
    path.write_bytes(body)
    return Archive.objects.create(appliance=appliance, path=str(path), size=len(body), sha256=sha256,
                                  secrets_included=secrets, consistency="stopped")


def age_passkey_check(client, seconds: float) -> None:
    session = client.session
    session[CHECKED_AT_KEY] = time.time() - seconds
    session.save()


@pytest.fixture()
def owner(idle_host):
    client = signed_in_person("Olive")
    return client


# --- Export and download --------------------------------------------------------------------------


def test_an_export_is_a_job_on_the_appliances_host_and_busy_or_unready_appliances_say_why(owner):
    appliance = ready_appliance(owner.user)
    response = owner.post(f"{API}/appliances/{appliance.pk}/archive")
    assert response.status_code == 202, response.content
    job = Operation.objects.get(pk=response.json()["id"])
    assert (job.kind, job.queue_name, job.params) == ("export", appliance.host.queue, {"secrets": False})

    again = owner.post(f"{API}/appliances/{appliance.pk}/archive")
    assert again.status_code == 409 and again.json()["code"] == "busy"

    booting = ready_appliance(owner.user, name="booting", status="booting")
    refused = owner.post(f"{API}/appliances/{booting.pk}/archive")
    assert refused.status_code == 409 and "status" in refused.json()


def test_the_download_serves_the_newest_archive_with_range_and_etag(owner):
    appliance = ready_appliance(owner.user)
    finished_archive(appliance, b"older archive")
    newest = finished_archive(appliance, bytes(range(256)) * 40)
    response = owner.get(f"{API}/appliances/{appliance.pk}/archive")
    body = b"".join(response.streaming_content)
    assert response.status_code == 200
    assert body == bytes(range(256)) * 40
    assert response["ETag"] == f'"{newest.sha256}"'
    assert response["Content-Type"] == "application/gzip"
    assert response["Content-Disposition"] == f'attachment; filename="appliance-{appliance.pk}.tar.gz"'

    partial = owner.get(f"{API}/appliances/{appliance.pk}/archive", HTTP_RANGE="bytes=1000-")
    assert partial.status_code == 206
    assert b"".join(partial.streaming_content) == body[1000:]
    assert partial["Content-Range"] == f"bytes 1000-{len(body) - 1}/{len(body)}"
    assert owner.get(f"{API}/appliances/{appliance.pk}/archive",
                     HTTP_IF_NONE_MATCH=f'"{newest.sha256}"').status_code == 304

    listed = owner.get(f"{API}/appliances/{appliance.pk}/archives").json()
    assert [a["sha256"] for a in listed] == [newest.sha256, hashlib.sha256(b"older archive").hexdigest()]
    assert listed[0]["download_url"] == f"/api/meshnet/appliances/{appliance.pk}/archive"


def test_while_an_export_builds_the_download_answers_202_with_its_progress(owner):
    appliance = ready_appliance(owner.user)
    finished_archive(appliance)
    started = owner.post(f"{API}/appliances/{appliance.pk}/archive").json()
    Operation.objects.filter(pk=started["id"]).update(status="running", progress=42)
    response = owner.get(f"{API}/appliances/{appliance.pk}/archive")
    assert response.status_code == 202
    assert (response.json()["id"], response.json()["progress"]) == (started["id"], 42)
    assert response["Retry-After"] == "2"


def test_a_download_with_no_archive_yet_starts_the_export(owner):
    appliance = ready_appliance(owner.user)
    response = owner.get(f"{API}/appliances/{appliance.pk}/archive")
    assert response.status_code == 202 and response.json()["kind"] == "export"
    # A file that vanished from the store is not served: a new export starts.
    Operation.objects.update(status="succeeded")
    gone = finished_archive(appliance)
    Path(gone.path).unlink()
    assert owner.get(f"{API}/appliances/{appliance.pk}/archive").status_code == 202


# --- Secrets --------------------------------------------------------------------------------------


def test_secrets_need_the_owner_and_a_fresh_passkey_or_a_token(owner, operator):
    appliance = ready_appliance(owner.user)
    url = f"{API}/appliances/{appliance.pk}/archive?secrets=include"

    response = owner.post(url)  # signed in with a passkey just now
    assert response.status_code == 202, response.content
    assert Operation.objects.get(pk=response.json()["id"]).params == {"secrets": True}
    Operation.objects.update(status="succeeded")

    age_passkey_check(owner, 301)
    for method in (owner.post, owner.get):
        stale = method(url)
        assert stale.status_code == 403, stale.content
        assert stale.json()["code"] == "passkey_recheck_required" and "secrets" in stale.json()
    # Without secrets, an old session is enough.
    assert owner.post(f"{API}/appliances/{appliance.pk}/archive").status_code == 202
    Operation.objects.update(status="succeeded")

    others = bearer(create_token(signed_in_person("Mallory"), "x", scope="write")["token"])
    assert owner.__class__().post(url, **others).status_code == 404

    age_passkey_check(owner, 0)
    owner_read = bearer(create_token(owner, "read", scope="read")["token"])
    owner_write = bearer(create_token(owner, "write", scope="write")["token"])
    assert owner.__class__().get(url, **owner_read).status_code == 403
    assert owner.__class__().post(url, **owner_write).status_code == 202
    Operation.objects.update(status="succeeded")

    # Operators see every appliance, but its keys stay its owner's.
    refused = operator.post(url)
    assert refused.status_code == 403 and "secrets" in refused.json()
    assert operator.post(f"{API}/appliances/{appliance.pk}/archive").status_code == 202


def test_an_archive_with_secrets_is_only_served_to_a_request_for_secrets(owner):
    appliance = ready_appliance(owner.user)
    finished_archive(appliance, b"with keys", secrets=True)
    plain = owner.get(f"{API}/appliances/{appliance.pk}/archive")
    assert plain.status_code == 202, "an archive with keys was served to a request without secrets"
    Operation.objects.update(status="succeeded")
    with_keys = owner.get(f"{API}/appliances/{appliance.pk}/archive?secrets=include")
    assert with_keys.status_code == 200 and b"".join(with_keys.streaming_content) == b"with keys"
    assert "secrets" in owner.get(f"{API}/appliances/{appliance.pk}/archive?secrets=yes").json()


# --- Import -----------------------------------------------------------------------------------------


def an_archive(tmp_path: Path, *, template: str = TEMPLATE, name: str = "imported", disk_gib: int = 2) -> Path:
    disk = tmp_path / "source.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), f"{disk_gib}G"], check=True)
    texts = {archive.USER_DATA: "#cloud-config\n", archive.META_DATA: "instance-id: iid-x\n",
             archive.WG0_CONF: "[Interface]\n", archive.MAIN_TF: "# terraform\n"}
    manifest = {"format": archive.FORMAT, "infrasim_version": "0.9.0", "created_at": "2026-11-25T00:00:00Z",
                "secrets_included": False, "appliance": {
                    "name": name, "template": template, "image_digest": "sha256:0", "os": "Debian 12", "vcpus": 1,
                    "memory_mib": 512, "disk_gib": disk_gib}}
    path = tmp_path / "appliance.tar.gz"
    with open(path, "wb") as output:
        archive.write(output, disk=disk, texts=texts, manifest=manifest, mtime=1_700_000_000)
    return path


def staged(archive_dir: Path) -> list[Path]:
    imports = archive_dir / "imports"
    return list(imports.iterdir()) if imports.exists() else []


def test_importing_an_upload_makes_an_appliance_with_its_own_peer_and_the_archives_disk(owner, tmp_path, archive_dir):
    path = an_archive(tmp_path)
    with open(path, "rb") as upload:
        response = owner.post(f"{API}/appliances/import", {"archive": upload, "name": "copy"})
    assert response.status_code == 201, response.content
    appliance = Appliance.objects.get(pk=response.json()["id"])
    assert (appliance.name, appliance.disk_gib, appliance.status) == ("copy", 2, "pending")
    assert appliance.imported_from == hashlib.sha256(path.read_bytes()).hexdigest()
    assert appliance.peer is not None and appliance.wg_private_key_sealed
    job = Operation.objects.get(appliance=appliance)
    [directory] = staged(archive_dir)
    assert job.kind == "create" and job.params == {"import_dir": str(directory)}
    assert sorted(p.name for p in directory.rglob("*") if p.is_file()) == [
        "disk.qcow2", "main.tf", "meta-data", "user-data", "wg0.conf"]


def test_importing_by_url_takes_an_archive_this_server_exported_that_you_can_see(owner, tmp_path, archive_dir):
    source = ready_appliance(owner.user)
    finished_archive(source, an_archive(tmp_path).read_bytes())
    response = owner.post(f"{API}/appliances/import", {
        "url": f"https://example.test{API}/appliances/{source.pk}/archive", "name": "from-url",
    }, content_type="application/json")
    assert response.status_code == 201, response.content

    mallory = client_for(person("mallory"))
    stolen = mallory.post(f"{API}/appliances/import", {"url": f"{API}/appliances/{source.pk}/archive"},
                          content_type="application/json")
    assert stolen.status_code == 404 and "url" in stolen.json()
    elsewhere = owner.post(f"{API}/appliances/import", {"url": "https://example.test/some.tar.gz"},
                           content_type="application/json")
    assert elsewhere.status_code == 400 and "url" in elsewhere.json()


@pytest.mark.parametrize(("case", "field", "code"), [
    ("nothing", "archive", "required"),
    ("garbage", "archive", "invalid_archive"),
    ("truncated", "archive", "invalid_archive"),
    ("unknown template", "template", "unknown"),
    ("duplicate name", "name", "duplicate_name"),
])
def test_a_refused_import_says_why_and_leaves_nothing(owner, tmp_path, archive_dir, case, field, code):
    ready_appliance(owner.user, name="taken")
    before = (Appliance.objects.count(), Peer.objects.count(), Operation.objects.count())
    path = an_archive(tmp_path, template="no-such-template" if case == "unknown template" else TEMPLATE)
    if case == "garbage":
        path.write_bytes(b"not an archive at all")
    if case == "truncated":
        path.write_bytes(path.read_bytes()[:-200])
    body = {} if case == "nothing" else {"archive": open(path, "rb")}
    if case == "duplicate name":
        body["name"] = "taken"
    response = owner.post(f"{API}/appliances/import", body)
    assert response.status_code in (400, 409), response.content
    assert field in response.json() and response.json()["code"] == code, response.json()
    assert (Appliance.objects.count(), Peer.objects.count(), Operation.objects.count()) == before
    assert staged(archive_dir) == []


def test_only_signed_in_writers_import(owner, tmp_path):
    path = an_archive(tmp_path)
    assert owner.__class__().post(f"{API}/appliances/import", {"archive": open(path, "rb")}).status_code == 401
    read = bearer(create_token(owner, "read", scope="read")["token"])
    assert owner.__class__().post(f"{API}/appliances/import", {"archive": open(path, "rb")}, **read).status_code == 403
    write = bearer(create_token(owner, "write", scope="write")["token"])
    assert owner.__class__().post(f"{API}/appliances/import", {"archive": open(path, "rb")},
                                  **write).status_code == 201


# --- Retention --------------------------------------------------------------------------------------


def test_retention_keeps_the_newest_per_appliance_and_a_size_bound_per_user(owner, settings):
    settings.ARCHIVE_KEEP_PER_APPLIANCE = 2
    settings.ARCHIVE_QUOTA_BYTES_PER_USER = 25
    web, db = ready_appliance(owner.user, "web"), ready_appliance(owner.user, "db")
    oldest = finished_archive(web, b"1" * 10)
    older = finished_archive(db, b"2" * 10)
    old = finished_archive(web, b"3" * 10)
    newest = finished_archive(web, b"4" * 10)
    removed = exports.prune_archives(owner.user.pk, keep=newest)
    # web keeps its two newest; then the oldest of the rest go until 25 bytes fit.
    assert set(removed) == {oldest.sha256, older.sha256}
    assert list(Archive.objects.values_list("pk", flat=True)) == [newest.pk, old.pk]
    assert not Path(oldest.path).exists() and not Path(older.path).exists() and Path(old.path).exists()

    settings.ARCHIVE_QUOTA_BYTES_PER_USER = 0
    assert exports.prune_archives(owner.user.pk, keep=newest) == [old.sha256]
    assert list(Archive.objects.all()) == [newest], "the archive just made always stays"


def test_the_same_bytes_exported_twice_share_a_file_that_pruning_keeps(owner, settings):
    settings.ARCHIVE_KEEP_PER_APPLIANCE = 1
    web = ready_appliance(owner.user)
    first = finished_archive(web, b"same")
    second = finished_archive(web, b"same")
    assert exports.prune_archives(owner.user.pk, keep=second) == [first.sha256]
    assert Path(second.path).read_bytes() == b"same"
