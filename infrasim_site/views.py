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

from identity import selectors as identity_selectors
from identity.forms import ClaimHandleForm
from mesh import views as mesh_views


@login_required
def dashboard(request, claim_form=None):
    """The console: one card per capability."""
    return render(
        request,
        "console/dashboard.html",
        {
            "identity": identity_selectors.identity_for(request.user),
            "claim_form": claim_form or ClaimHandleForm(),
            "passkey_count": identity_selectors.passkeys_for(request.user).count(),
            **mesh_views.card_context(request.user),
        },
        status=400 if claim_form is not None and claim_form.errors else 200,
    )


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
