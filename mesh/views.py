from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST
from django_htmx.http import trigger_client_event

from infrasim_site.errors import ServiceError
from mesh import selectors, services


def card_context(user, params=None) -> dict:
    # The card lists the user's own peers, also for operators (the admin shows everybody's).
    network = selectors.networks().first()
    # Before the first peer no network exists; it will get the configured endpoint.
    endpoint = network.endpoint if network else "{}:{}".format(*settings.WG_GATEWAY_ENDPOINT)
    return {
        "peers": selectors.peers_for(user, params, own_only=True),
        "network": network,
        "endpoint": endpoint,
        "endpoint_is_loopback": services.endpoint_is_loopback(endpoint),
    }


@login_required
def mesh_card(request):
    return render(request, "mesh/_mesh_card.html", card_context(request.user, request.GET))


@login_required
@require_POST
def peer_revoke(request, pk: int):
    try:
        peer = services.peer_revoke(actor=request.user, peer_id=pk)
        level, message = "ok", f"Peer “{peer.name}” revoked: it can no longer connect."
    except ServiceError as exc:
        level, message = "error", exc.message
    if not request.htmx:
        (messages.success if level == "ok" else messages.error)(request, message)
        return redirect("console:dashboard")
    # The card's message area survives live refreshes (hx-preserve), so the
    # outcome travels as an event that mesh.js writes into it.
    response = render(request, "mesh/_mesh_card.html", card_context(request.user))
    return trigger_client_event(response, "mesh-notice", {"level": level, "message": message})
