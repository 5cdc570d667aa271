from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.response import Response
from rest_framework.reverse import reverse as api_reverse
from rest_framework.views import APIView

from infrasim_site import cards


@login_required
def dashboard(request, card_state: dict[str, dict] | None = None, status: int = 200):
    """The console: the cards the apps registered (infrasim_site.cards)."""
    return render(request, "console/dashboard.html", {"cards": cards.render_cards(request, card_state)}, status=status)


def no_passwords(request):
    raise Http404("InfraSim has no passwords: manage your passkeys instead.")


def admin_login(request):
    if request.user.is_authenticated and not request.user.is_staff:
        messages.error(request, "The admin is for operators.")
        return redirect("console:dashboard")
    target = request.GET.get("next") or reverse("admin:index")
    return redirect(f"{reverse('identity:signin')}?{urlencode({'next': target})}")


class ApiRootView(APIView):
    """Entry point of the browsable API: every endpoint family, and the way
    back to the console."""

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request):
        def link(name: str) -> str:
            return api_reverse(name, request=request)

        families = {
            "me": link("me"),
            "identity": link("identity"),
            "availability": link("identity-availability"),
            "passkeys": link("passkey-list"),
            "tokens": link("api-token-list"),
            "mesh-peers": link("mesh-peer-list"),
            "mesh-networks": link("mesh-network-list"),
        }
        if request.user.is_staff:
            families["mesh-gateway-config"] = link("mesh-gateway-config")
        return Response(
            {
                **families,
                "schema": link("api-schema"),
                "docs": link("api-docs"),
                "console": link("console:dashboard"),
            }
        )
