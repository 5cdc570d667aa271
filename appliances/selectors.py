"""Reads for the API, the console and the admin."""

from __future__ import annotations

from appliances.models import Appliance, CacheEntry, Host, Operation, Template


def templates():
    return Template.objects.filter(enabled=True)


def cache_by_template() -> dict[int, list[tuple[Host, CacheEntry | None]]]:
    """Each template's cache entry on every enabled host (None: not cached there)."""
    hosts = list(Host.objects.filter(enabled=True))
    entries = {(e.template_id, e.host_id): e for e in CacheEntry.objects.all()}
    return {
        template_id: [(host, entries.get((template_id, host.pk))) for host in hosts]
        for template_id in Template.objects.filter(enabled=True).values_list("pk", flat=True)
    }


def operations(appliance: Appliance, limit: int = 50):
    return list(Operation.objects.filter(appliance=appliance)[:limit])
