"""The console's Appliances card and the serial console page. Both only
read: every change goes through the JSON API (appliances/api), which the
card's script calls."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.contrib.auth.decorators import login_required
from django.db.models import Prefetch
from django.http import Http404
from django.shortcuts import render
from django.views.decorators.http import require_GET

from appliances import selectors
from appliances.models import Appliance, Archive, CacheEntry, Host, Operation, Template
from appliances.services import ALLOWED_FROM, snapshot_support
from infrasim_site.middleware import content_security_policy
from infrasim_site.steps import UNFINISHED, StepStatus

Status = Appliance.Status
Kind = Operation.Kind

POWER_ACTIONS = [(Kind.START, "Start"), (Kind.SHUTDOWN, "Shut down"), (Kind.REBOOT, "Reboot"),
                 (Kind.POWEROFF, "Power off"), (Kind.EXPORT, "Export")]
# A domain exists and may run: the live console can attach (the page says
# so when it does not run after all).
CONSOLE_STATES = {Status.BOOTING, Status.READY, Status.FAILED}
# Statuses that move on without an event for each step (a job's percent,
# a boot being watched): the card looks again while one is shown.
SETTLING = {Status.PENDING, Status.PREPARING_IMAGE, Status.PROVISIONING, Status.BOOTING, Status.MIGRATING,
            Status.DELETING}


def size_label(mib: int) -> str:
    if mib < 1024:
        return f"{mib} MiB"
    gib = mib / 1024
    return f"{gib:.0f} GiB" if gib == int(gib) else f"{gib:.1f} GiB"


@dataclass(frozen=True)
class Action:
    kind: str
    label: str
    enabled: bool
    why: str


def _action(appliance: Appliance, kind: str, label: str, busy: Operation | None) -> Action:
    allowed, why = ALLOWED_FROM[kind]
    if busy is not None:
        return Action(kind, label, False, f"Busy: {busy.get_kind_display()} is running.")
    if appliance.status not in allowed:
        return Action(kind, label, False, f"Not while it is {appliance.get_status_display()}. {why}")
    return Action(kind, label, True, "")


@dataclass(frozen=True)
class Row:
    appliance: Appliance
    operation: Operation | None
    actions: list[Action]
    snapshot: Action
    snapshot_changes: Action  # revert and delete
    snapshot_note: str
    console: bool
    memory: str
    show_error: bool
    archive: Archive | None  # the newest finished export without secrets


def _row(appliance: Appliance) -> Row:
    busy = appliance.unfinished[0] if appliance.unfinished else None
    return Row(
        appliance=appliance,
        operation=busy,
        actions=[_action(appliance, kind, label, busy) for kind, label in POWER_ACTIONS],
        snapshot=_action(appliance, Kind.SNAPSHOT_CREATE, "Take snapshot", busy),
        snapshot_changes=_action(appliance, Kind.SNAPSHOT_REVERT, "Revert", busy),
        snapshot_note=snapshot_support(appliance)["note"],
        console=appliance.status in CONSOLE_STATES,
        memory=size_label(appliance.memory_mib),
        show_error=bool(appliance.last_error)
        and (appliance.status == Status.FAILED or appliance.status_detail.endswith("failed")),
        archive=appliance.plain_archives[0] if appliance.plain_archives else None,
    )


def appliance_rows(user) -> list[Row]:
    # The card lists the user's own appliances, also for operators (the admin shows everybody's).
    appliances = (
        Appliance.objects.owned_by(user)
        .select_related("template", "host", "peer")
        .prefetch_related(
            Prefetch("operations", queryset=Operation.objects.filter(status__in=UNFINISHED), to_attr="unfinished"),
            "snapshots",
            Prefetch("archives", queryset=Archive.objects.filter(secrets_included=False), to_attr="plain_archives"),
        )
    )
    return [_row(appliance) for appliance in appliances]


@dataclass(frozen=True)
class TemplateChoice:
    template: Template
    summary: str  # a few words for the option
    detail: str  # a sentence under the select


def _template_choice(template: Template, entries: list[tuple[Host, CacheEntry | None]]) -> TemplateChoice:
    verb = "builds" if template.recipe else "downloads"
    ready = [host.name for host, entry in entries if entry is not None and entry.status == StepStatus.SUCCEEDED]
    if ready:
        return TemplateChoice(template, "cached",
                              f"Cached on {', '.join(ready)}: a new appliance starts from it at once.")
    working = [(host, entry) for host, entry in entries if entry is not None and entry.status in UNFINISHED]
    if working:
        host, entry = working[0]
        now = entry.detail or ("building" if template.recipe else "downloading")
        return TemplateChoice(template, f"being {'built' if template.recipe else 'downloaded'} now",
                              f"On {host.name} now: {now}.")
    failed = [entry for _, entry in entries if entry is not None and entry.status == StepStatus.FAILED]
    detail = f"Not cached yet: the first appliance {verb} it on its host, which takes a few minutes."
    if failed:
        detail += f" The last attempt failed: {failed[0].last_error[:200]}"
    return TemplateChoice(template, f"first use {verb} it", detail)


def template_choices() -> list[TemplateChoice]:
    cache = selectors.cache_by_template()
    return [_template_choice(template, cache.get(template.pk, [])) for template in selectors.templates()]


def card_context(user) -> dict:
    rows = appliance_rows(user)
    return {
        "rows": rows,
        "templates": template_choices(),
        "settling": any(row.operation or row.appliance.status in SETTLING for row in rows),
    }


@login_required
@require_GET
def appliances_card(request):
    return render(request, "appliances/_appliances_card.html", card_context(request.user))


@login_required
@require_GET
def appliance_console(request, pk: int):
    appliance = (
        Appliance.objects.visible_to(request.user).select_related("host", "template", "peer").filter(pk=pk).first()
    )
    if appliance is None:
        raise Http404("No such appliance.")
    # xterm.js styles its rows with <style> elements it creates; the page
    # stamps this response's nonce on each (static/appliances/style-nonce.js),
    # so only those run, and no inline style from anywhere else.
    nonce = secrets.token_urlsafe(18)
    response = render(request, "appliances/console.html", {"appliance": appliance, "style_nonce": nonce})
    response["Content-Security-Policy"] = f"{content_security_policy()}; style-src-elem 'self' 'nonce-{nonce}'"
    return response
