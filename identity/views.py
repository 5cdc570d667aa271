"""Console pages for identity. Passkey ceremonies run in the browser
(static/identity/passkeys.js) against the JSON API; these views render pages
and hand form posts to the same services the API uses."""

from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from identity import provisioning, selectors, services
from identity.forms import ClaimHandleForm, CreateTokenForm, RenameForm
from infrasim_site.errors import ServiceError


def _next_url(request) -> str:
    target = request.GET.get("next") or ""
    if url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return target
    return reverse("console:dashboard")


def signin(request):
    if request.user.is_authenticated:
        return redirect(_next_url(request))
    return render(request, "identity/signin.html", {"next": _next_url(request)})


def signup(request):
    if request.user.is_authenticated:
        return redirect("console:dashboard")
    return render(request, "identity/signup.html")


def enroll(request, token: str):
    if not services.enrollment_is_valid(token):
        raise Http404("This enrollment link is invalid, used or expired.")
    return render(request, "identity/enroll.html", {"token": token})


@require_POST
def signout(request):
    logout(request)
    return redirect("identity:signin")


@login_required
def passkeys(request):
    return render(
        request, "identity/passkeys.html", {"passkeys": selectors.passkeys_for(request.user), "rename_form": RenameForm()}
    )


def _run(request, action, *, success: str | None = None) -> None:
    try:
        action()
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        if success:
            messages.success(request, success)


@login_required
@require_POST
def passkey_rename(request, pk: int):
    form = RenameForm(request.POST)
    name = form.data.get("name", "")
    _run(request, lambda: services.passkey_rename(actor=request.user, passkey_id=pk, name=name), success="Renamed.")
    return redirect("identity:passkeys")


@login_required
@require_POST
def passkey_delete(request, pk: int):
    _run(request, lambda: services.passkey_delete(actor=request.user, passkey_id=pk), success="Passkey deleted.")
    return redirect("identity:passkeys")


@login_required
def tokens(request):
    created_secret = None
    form = CreateTokenForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            token, created_secret = services.api_token_create(
                actor=request.user, name=form.cleaned_data["name"], expires_at=form.cleaned_data["expires_at"]
            )
        except ServiceError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, exc.message)
        else:
            form = CreateTokenForm()
    return render(
        request,
        "identity/tokens.html",
        {"tokens": selectors.api_tokens_for(request.user), "form": form, "created_secret": created_secret},
    )


@login_required
@require_POST
def token_revoke(request, pk: int):
    _run(request, lambda: services.api_token_revoke(actor=request.user, token_id=pk), success="Token revoked.")
    return redirect("identity:tokens")


def _identity_card(request, form):
    """The dashboard's Identity card alone (htmx swaps and live refresh), or the
    whole dashboard when the browser posted without JavaScript."""
    from infrasim_site.views import dashboard

    if not request.htmx:
        if request.method == "POST" and not form.errors:
            return redirect("console:dashboard")
        return dashboard(request, claim_form=form)
    return render(
        request, "identity/_identity_card.html", {"identity": selectors.identity_for(request.user), "claim_form": form}
    )


@login_required
def identity_card(request):
    return _identity_card(request, ClaimHandleForm())


@login_required
@require_POST
def identity_claim(request):
    form = ClaimHandleForm(request.POST)
    if form.is_valid():
        try:
            provisioning.identity_claim(actor=request.user, handle=form.cleaned_data["handle"])
        except ServiceError as exc:
            form.add_error("handle", exc.message)
    return _identity_card(request, form)


def _card_action(request, action):
    form = ClaimHandleForm()
    try:
        action(actor=request.user)
    except ServiceError as exc:
        form.add_error(None, exc.message)
    return _identity_card(request, form)


@login_required
@require_POST
def identity_provision(request):
    return _card_action(request, provisioning.identity_start_provisioning)


@login_required
@require_POST
def identity_cancel(request):
    return _card_action(request, provisioning.identity_cancel)


@login_required
def identity_availability(request):
    """As-you-type check while picking a handle (htmx)."""
    handle = request.GET.get("handle", "")
    if not handle.strip():
        return render(request, "identity/_availability.html", {})
    try:
        result = provisioning.identity_availability(handle=handle)
    except ServiceError as exc:
        return render(request, "identity/_availability.html", {"error": exc.message})
    return render(request, "identity/_availability.html", {"result": result})
