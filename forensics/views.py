"""The console's Forensics card: capture a running appliance's memory, follow
the capture live, download the evidence and its bundle, and co-sign the
attestation with a passkey. Everything it does goes through the JSON API."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.views.decorators.http import require_GET

from appliances.models import Appliance
from forensics import services
from forensics.models import Acquisition, SigningKey

RUNNING = (Appliance.Status.READY, Appliance.Status.BOOTING)


def card_context(user) -> dict:
    may_acquire = services.may_acquire(user)
    acquisitions = list(services.visible_acquisitions(user)[:20]) if user.is_authenticated else []
    running = []
    if may_acquire:
        running = [appliance for appliance in Appliance.objects.visible_to(user).filter(status__in=RUNNING)
                   .select_related("owner", "host").order_by("name") if services.may_acquire(user, appliance)]
    return {
        "show": may_acquire or bool(acquisitions),
        "may_acquire": may_acquire,
        "running": running,
        "formats": Acquisition.Format.choices,
        "acquisitions": acquisitions,
        "key": SigningKey.objects.filter(user=user, retired_at__isnull=True).first() if user.is_authenticated else None,
        "settling": any(a.status in ("pending", "dumping", "signing") for a in acquisitions),
    }


@login_required
@require_GET
def forensics_card(request):
    return render(request, "forensics/_forensics_card.html", card_context(request.user))
