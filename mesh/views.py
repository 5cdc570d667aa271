from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from infrasim_site.errors import ServiceError
from mesh import selectors, services


def card_context(user, params=None) -> dict:
    # The card lists the user's own peers, also for operators (the admin shows everybody's).
    return {"peers": selectors.peers_for(user, params, own_only=True), "network": selectors.networks().first()}


@login_required
def mesh_card(request):
    return render(request, "mesh/_mesh_card.html", card_context(request.user, request.GET))


@login_required
@require_POST
def peer_revoke(request, pk: int):
    error = None
    try:
        services.peer_revoke(actor=request.user, peer_id=pk)
    except ServiceError as exc:
        error = exc.message
    if not request.htmx:
        return redirect("console:dashboard")
    return render(request, "mesh/_mesh_card.html", {**card_context(request.user), "error": error})
