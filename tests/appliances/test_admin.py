"""Operators run hosts, the catalog and appliances from the admin; actions
call the same services as the API (and refuse what they refuse)."""

import html


from appliances import services
from appliances.models import Appliance, CacheEntry, Operation, Template
from tests.appliances.conftest import TEMPLATE, make_host
from tests.people import person


def test_the_host_list_shows_capacity_use_acceleration_and_health(operator_client):
    host = make_host("rack1", vcpus=8, memory_mib=4096, disk_gib=100, acceleration="tcg",
                     acceleration_detail="KVM cannot boot Linux here", last_error="unreachable: connection refused")
    services.appliance_create(actor=person("alice"), name="web", template=TEMPLATE, vcpus=2, memory_mib=1024)
    page = operator_client.get("/admin/appliances/host/").content.decode()
    assert "rack1" in page and "8 vCPU, 4096 MiB, 100 GiB" in page
    assert "1 appliances: 2 vCPU, 1024 MiB, 4 GiB" in page
    assert "TCG" in page and "unreachable: connection refused" in page
    detail = operator_client.get(f"/admin/appliances/host/{host.pk}/change/").content.decode()
    assert "KVM cannot boot Linux here" in detail


def test_admin_actions_queue_jobs_through_the_services_and_report_refusals(operator_client):
    make_host()
    ready = services.appliance_create(actor=person("alice"), name="ready-one", template=TEMPLATE)
    pending = services.appliance_create(actor=person("bob"), name="pending-one", template=TEMPLATE)
    Operation.objects.filter(appliance=ready).update(status="succeeded")
    Appliance.objects.filter(pk=ready.pk).update(status="ready")
    response = operator_client.post("/admin/appliances/appliance/", {
        "action": "reboot", "_selected_action": [ready.pk, pending.pk],
    }, follow=True)
    page = html.unescape(response.content.decode())
    assert "Reboot queued: 1." in page
    assert "Cannot reboot 'pending-one' while it is pending" in page
    assert Operation.objects.filter(appliance=ready, kind="reboot", status="pending").exists()
    change = operator_client.get(f"/admin/appliances/appliance/{ready.pk}/change/").content.decode()
    assert ready.wg_private_key_sealed not in change


def test_caching_a_template_everywhere_makes_one_entry_per_host(operator_client):
    make_host("a")
    make_host("b")
    template_id = Template.objects.get(slug=TEMPLATE).pk
    operator_client.post("/admin/appliances/template/", {"action": "cache_everywhere", "_selected_action": [template_id]})
    operator_client.post("/admin/appliances/template/", {"action": "cache_everywhere", "_selected_action": [template_id]})
    assert sorted(CacheEntry.objects.values_list("host__name", flat=True)) == ["a", "b"]


def test_operators_export_from_the_admin_and_see_each_appliances_archives(operator_client):
    from appliances.models import Archive

    make_host()
    stopped = services.appliance_create(actor=person("alice"), name="stopped-one", template=TEMPLATE)
    Operation.objects.filter(appliance=stopped).update(status="succeeded")
    Appliance.objects.filter(pk=stopped.pk).update(status="stopped")
    response = operator_client.post("/admin/appliances/appliance/", {
        "action": "export", "_selected_action": [stopped.pk],
    }, follow=True)
    assert "Export queued: 1." in html.unescape(response.content.decode())
    job = Operation.objects.get(appliance=stopped, kind="export")
    assert job.params == {"secrets": False}, "the admin never exports keys"
    Archive.objects.create(appliance=stopped, path="/nonexistent", size=123, sha256="cd" * 32, consistency="stopped")
    change = operator_client.get(f"/admin/appliances/appliance/{stopped.pk}/change/").content.decode()
    assert "cd" * 32 in change
