"""Console pages for identity. Passkey ceremonies run in the browser
(static/identity/passkeys.js) against the JSON API; these views render pages
and hand form posts to the same services the API uses."""

from datetime import datetime
from functools import wraps

from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from infrasim_site.templatetags.console import relative
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from identity import provisioning, selectors, services
from identity.forms import ClaimHandleForm, CreateTokenForm
from identity.models import Identity, ProvisioningStep
from identity.providers import provider_for
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


# What an operator must set for each backend; a step whose backend is
# missing names them on the card instead of failing mysteriously.
BACKEND_SETTINGS = {
    "dns": "DNS_SERVER, DNS_TSIG_KEY_NAME, DNS_TSIG_SECRET and one of DNS_TARGET_A, DNS_TARGET_AAAA, DNS_TARGET_CNAME",
    "matrix": "MATRIX_HOMESERVER_URL, MATRIX_ADMIN_TOKEN",
    "s3": "S3_ENDPOINT_URL, S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY",
}
NOTICE_KEY = "identity_card_notice"
IN_PROGRESS = {ProvisioningStep.Status.PENDING, ProvisioningStep.Status.RUNNING, ProvisioningStep.Status.RETRYING}
UNFINISHED = {ProvisioningStep.Status.FAILED, ProvisioningStep.Status.NOT_CONFIGURED}


def _retry(identity: Identity | None, steps: list[ProvisioningStep]) -> dict | None:
    """The retry button, and why it is disabled while a retry cannot succeed."""
    if identity is None or identity.status in {Identity.Status.ACTIVE, Identity.Status.CANCELLING}:
        return None
    label = "Provision" if identity.status == Identity.Status.RESERVED else "Retry provisioning"
    if identity.status in {Identity.Status.PENDING, Identity.Status.PROVISIONING} or any(
        step.status in IN_PROGRESS for step in steps
    ):
        return {"label": label, "blocked": "Provisioning is still running; wait for it to finish."}
    unfinished = [step for step in steps if step.status in UNFINISHED]
    if unfinished and all(provider_for(step.kind) is None for step in unfinished):
        names = ", ".join(step.get_kind_display() for step in unfinished)
        return {"label": label, "blocked": f"Retrying cannot help: {names} not set up on this server yet."}
    return {"label": label, "blocked": ""}


def identity_card_context(request, claim_form=None) -> dict:
    identity = selectors.identity_for(request.user)
    steps = list(identity.steps.all()) if identity else []
    notice = request.session.get(NOTICE_KEY)
    return {
        "identity": identity,
        "identity_updated": identity and {"at": identity.updated_at, "words": relative(identity.updated_at)},
        "steps": [
            {
                "step": step,
                "missing_settings": BACKEND_SETTINGS[step.kind] if step.status == ProvisioningStep.Status.NOT_CONFIGURED else "",
                "next_attempt": step.next_attempt_at
                and step.status == ProvisioningStep.Status.RETRYING
                and {"at": step.next_attempt_at, "words": relative(step.next_attempt_at)},
            }
            for step in steps
        ],
        "retry": _retry(identity, steps),
        "is_operator": request.user.is_staff,
        "notice": notice and {**notice, "words": relative(datetime.fromisoformat(notice["at"]))},
        "claim_form": claim_form or ClaimHandleForm(),
        "passkey_count": selectors.passkeys_for(request.user).count(),
    }


def _notify(request, text: str | None) -> None:
    """Keep the outcome of the last card action on the card until the next
    one, so a live refresh right after it does not wipe the confirmation."""
    if text:
        request.session[NOTICE_KEY] = {"text": text, "at": timezone.now().isoformat()}
    else:
        request.session.pop(NOTICE_KEY, None)


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
    notice = None
    if form.is_valid():
        try:
            identity = provisioning.identity_claim(actor=request.user, handle=form.cleaned_data["handle"])
        except ServiceError as exc:
            form.add_error("handle", exc.message)
        else:
            notice = f"Handle {identity.handle} claimed: provisioning queued for {identity.handle}."
    _notify(request, notice)
    return _identity_card(request, form)


def _card_action(request, action, confirmation):
    form = ClaimHandleForm()
    notice = None
    try:
        identity = action(actor=request.user)
    except ServiceError as exc:
        form.add_error(None, exc.message)
    else:
        notice = confirmation(identity.handle)
    _notify(request, notice)
    return _identity_card(request, form)


@login_required
@require_POST
def identity_provision(request):
    return _card_action(
        request, provisioning.identity_start_provisioning, lambda handle: f"Provisioning queued for {handle}."
    )


@login_required
@require_POST
def identity_cancel(request):
    return _card_action(
        request,
        provisioning.identity_cancel,
        lambda handle: f"Handle {handle} given up: its DNS name, Matrix account and bucket are being removed.",
    )


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
