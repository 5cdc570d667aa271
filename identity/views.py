"""Console pages for identity. Passkey ceremonies run in the browser
(static/identity/passkeys.js) against the JSON API; these views render pages
and hand form posts to the same services the API uses."""

from functools import wraps

from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from identity import provisioning, selectors, services
from identity.forms import ClaimHandleForm, CreateTokenForm
from identity.sessions import PASSKEY_KEY, passkey_checked_recently, signed_in_with_passkey
from infrasim_site.errors import ServiceError
from infrasim_site.http import no_store


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


def passkey_session_required(view):
    """Credential pages: signed in, and with a passkey (not an enrollment or
    forced login). The most sensitive posts check recency themselves."""

    @login_required
    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not signed_in_with_passkey(request.session):
            logout(request)
            return redirect(f"{reverse('identity:signin')}?next={request.path}")
        return view(request, *args, **kwargs)

    return wrapped


def _recheck_first(request) -> bool:
    """Sudo mode: True (and a message saying why) when the session's passkey
    check is older than PASSKEY_RECHECK_SECONDS."""
    if passkey_checked_recently(request.session):
        return False
    messages.warning(request, "Confirm with your passkey first: this needs a passkey check within the last 10 minutes.")
    return True


def _credential_page_context(request) -> dict:
    return {"recently_checked": passkey_checked_recently(request.session)}


@passkey_session_required
def passkeys(request):
    return render(
        request,
        "identity/passkeys.html",
        {
            "passkeys": selectors.passkeys_for(request.user),
            "current_passkey": request.session.get(PASSKEY_KEY),
            "other_sessions": selectors.other_sessions_count(request.user, request.session.session_key),
            **_credential_page_context(request),
        },
    )


def _run(request, action, *, success: str | None = None) -> None:
    try:
        action()
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        if success:
            messages.success(request, success)


@passkey_session_required
@require_POST
def passkey_rename(request, pk: int):
    name = request.POST.get("name", "")
    _run(request, lambda: services.passkey_rename(actor=request.user, passkey_id=pk, name=name), success=f"Renamed to “{' '.join(name.split())}”.")
    return redirect("identity:passkeys")


@passkey_session_required
@require_POST
def passkey_delete(request, pk: int):
    if _recheck_first(request):
        return redirect("identity:passkeys")
    passkey = selectors.passkeys_for(request.user).filter(pk=pk).first()
    label = f"“{passkey.name}”" if passkey else "The passkey"
    _run(
        request,
        lambda: services.passkey_delete(actor=request.user, passkey_id=pk),
        success=f"{label} was deleted, and every session signed in with it has ended.",
    )
    return redirect("identity:passkeys")


@passkey_session_required
@require_POST
def sessions_end_others(request):
    ended = services.sessions_end_others(actor=request.user, keep_session_key=request.session.session_key)
    messages.success(request, f"Signed out everywhere else ({ended} other session{'s' if ended != 1 else ''} ended).")
    return redirect("identity:passkeys")


@passkey_session_required
def tokens(request):
    created = None
    form = CreateTokenForm(request.POST or None)
    if request.method == "POST" and not _recheck_first(request) and form.is_valid():
        try:
            token, secret = services.api_token_create(
                actor=request.user,
                name=form.cleaned_data["name"],
                scope=form.cleaned_data["scope"],
                expires_at=form.cleaned_data["expires_at"],
            )
        except ServiceError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, exc.message)
        else:
            created = {"token": token, "secret": secret}
            form = CreateTokenForm()
    response = render(
        request,
        "identity/tokens.html",
        {
            "tokens": selectors.api_tokens_for(request.user),
            "form": form,
            "created": created,
            **_credential_page_context(request),
        },
        status=400 if form.errors else 200,
    )
    return no_store(response) if created else response


@passkey_session_required
@require_POST
def token_revoke(request, pk: int):
    token = selectors.api_tokens_for(request.user).filter(pk=pk).first()
    label = f"“{token.name}” (isk_{token.prefix}…)" if token else "The token"
    _run(
        request,
        lambda: services.api_token_revoke(actor=request.user, token_id=pk),
        success=f"{label} was revoked: it no longer works.",
    )
    return redirect("identity:tokens")


def identity_card_context(request, claim_form=None) -> dict:
    return {
        "identity": selectors.identity_for(request.user),
        "claim_form": claim_form or ClaimHandleForm(),
        "passkey_count": selectors.passkeys_for(request.user).count(),
    }


def _identity_card(request, form):
    """The dashboard's Identity card alone (htmx swaps and live refresh), or the
    whole dashboard when the browser posted without JavaScript."""
    from infrasim_site.views import dashboard

    status = 400 if form.errors else 200
    if not request.htmx:
        if request.method == "POST" and not form.errors:
            return redirect("console:dashboard")
        return dashboard(request, card_state={"identity": {"claim_form": form}}, status=status)
    # 200 even with errors: htmx swaps only successful answers, and the form
    # with its errors is what must appear.
    return render(request, "identity/_identity_card.html", identity_card_context(request, form))


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
