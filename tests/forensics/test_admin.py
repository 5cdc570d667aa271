"""Operators capture memory from the admin: an action on the appliances list
opens the capture form, which calls the same service as the API (and shows
its refusals beside the field); captures are read-only records, and keys
rotate from their list."""

import html

from appliances.models import Operation
from forensics.models import Acquisition, SigningKey
from tests.forensics.acquisitions import a_complete_acquisition, a_running_appliance
from tests.people import person


def test_capture_memory_from_the_appliances_list(operator_client):
    appliance = a_running_appliance(person("alice"))
    chosen = operator_client.post("/admin/appliances/appliance/", {
        "action": "capture_memory", "_selected_action": [appliance.pk]})
    assert chosen.status_code == 302 and chosen["Location"].endswith(f"/admin/forensics/acquisition/add/?appliance={appliance.pk}")
    form = operator_client.get(chosen["Location"]).content.decode()
    assert f'<option value="{appliance.pk}" selected>' in form

    made = operator_client.post("/admin/forensics/acquisition/add/", {
        "appliance": appliance.pk, "case_ref": "INC-ADMIN", "reason": "from the admin", "format": "elf"}, follow=True)
    assert made.status_code == 200
    acquisition = Acquisition.objects.get(case_ref="INC-ADMIN")
    assert acquisition.operation.kind == "memory_dump" and acquisition.status == "pending"

    busy = operator_client.post("/admin/forensics/acquisition/add/", {
        "appliance": appliance.pk, "case_ref": "INC-AGAIN", "reason": "twice", "format": "elf"})
    page = html.unescape(busy.content.decode())
    assert busy.status_code == 200 and "is busy (capture memory)" in page
    assert not Acquisition.objects.filter(case_ref="INC-AGAIN").exists()
    assert Operation.objects.filter(appliance=appliance, kind="memory_dump").count() == 1


def test_a_capture_is_a_read_only_record_with_its_downloads(operator_client):
    acquisition = a_complete_acquisition(person("olga", operator=True))
    page = html.unescape(operator_client.get(f"/admin/forensics/acquisition/{acquisition.pk}/change/").content.decode())
    assert acquisition.sha256 in page and f"/api/forensics/acquisitions/{acquisition.pk}/bundle" in page
    assert operator_client.post(f"/admin/forensics/acquisition/{acquisition.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Acquisition.objects.filter(pk=acquisition.pk).exists()


def test_rotating_a_key_from_the_admin_keeps_the_old_one_published(operator_client):
    olga = person("olga", operator=True)
    acquisition = a_complete_acquisition(olga)
    old = acquisition.signing_key
    response = operator_client.post("/admin/forensics/signingkey/", {"action": "rotate", "_selected_action": [old.pk]},
                                    follow=True)
    assert "new key" in html.unescape(response.content.decode())
    old.refresh_from_db()
    assert old.retired_at is not None
    assert SigningKey.objects.filter(user=olga, retired_at__isnull=True).count() == 1
