"""Identity: every write about accounts, passkeys, handles and tokens.

The console, the API, the admin and the Celery tasks all call these functions;
none of them holds a rule of its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django_otp_webauthn import exceptions as webauthn_errors
from django_otp_webauthn.models import WebAuthnCredential, WebAuthnUserHandle
from django_otp_webauthn.utils import rewrite_exceptions
from webauthn import base64url_to_bytes

from forensics import ledger
from identity.models import ApiToken, OperatorEnrollment, User, UserSession
from identity.passkeys import PasskeyHelper
from identity.sessions import stored_key
from infrasim_site.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from infrasim_site.text import clean_name

log = logging.getLogger(__name__)


DISPLAY_NAME_MAX = 64
PASSKEY_NAME_MAX = 64
TOKEN_NAME_MAX = 64


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# --- Passkey registration: sign-up, operator enrollment, adding a passkey -------
#
# A ceremony spans two requests. `*_begin` returns the options for the browser
# and a `pending` dict; the view keeps `pending` in the session and hands it
# back to `*_complete`, which verifies the browser's answer against it.


def passkey_registration_begin(
    *,
    actor: User | None,
    display_name: str | None = None,
    enrollment_token: str | None = None,
    previous: dict | None = None,
) -> tuple[dict, dict]:
    """Creation options for whoever is asking: an enrollment link enrolls the
    account it was issued for (even in a browser signed in as somebody else),
    a signed-in `actor` adds a passkey, and anybody else signs up as a new
    account named `display_name`. A sign-up creates no account row yet: it
    lives in `pending` until its passkey is verified."""
    if enrollment_token:
        user, purpose = _enrollment_user(enrollment_token), "enroll"
    elif actor is not None:
        user, purpose = actor, "add"
    else:
        user, purpose = User(display_name=clean_name(display_name, field="display_name", max_length=DISPLAY_NAME_MAX)), "signup"
    # Trying again in the same tab keeps the sign-up's user handle, so an
    # authenticator replaces its half-made credential instead of adding one.
    user_handle = None
    if purpose == "signup":
        kept = previous.get("user_handle") if previous and previous.get("purpose") == "signup" else None
        user_handle = bytes.fromhex(kept) if kept else secrets.token_bytes(64)
    options, state = PasskeyHelper(new_user_handle=user_handle).register_begin(user=user)
    pending = {
        "purpose": purpose,
        "user_id": user.pk,
        "display_name": user.display_name if purpose == "signup" else None,
        "user_handle": user_handle.hex() if user_handle else None,
        "enrollment_token_hash": _hash_secret(enrollment_token) if purpose == "enroll" else None,
        "state": state,
    }
    return options, pending


def _enrollment_user(token: str) -> User:
    enrollment = (
        OperatorEnrollment.objects.select_related("user")
        .filter(token_hash=_hash_secret(token), used_at__isnull=True, expires_at__gt=timezone.now())
        .first()
    )
    if enrollment is None:
        raise PermissionDenied(
            "This enrollment link is invalid, used or expired. Ask for a new one.",
            field="enrollment_token",
            code="enrollment_invalid",
        )
    return enrollment.user


def passkey_registration_complete(
    *, pending: dict | None, actor: User | None, credential: dict, passkey_name: str | None = None
) -> tuple[WebAuthnCredential, bool]:
    """Verify the browser's RegistrationResponseJSON against the pending
    ceremony and store the passkey (and, for a sign-up, the account). Returns
    the passkey and whether the caller should sign its owner in (sign-up and
    enrollment do; adding a passkey keeps the current session)."""
    if not pending:
        raise webauthn_errors.InvalidState()
    if not isinstance(credential, dict):
        raise InvalidInput("Expected the RegistrationResponseJSON object.", field="credential", code="invalid_type")
    name = clean_name(passkey_name, field="name", max_length=PASSKEY_NAME_MAX, required=False)
    purpose = pending["purpose"]
    if purpose == "add" and (actor is None or actor.pk != pending["user_id"]):
        raise webauthn_errors.InvalidState()

    _check_origin(credential)
    credential = _with_clean_extension_results(credential)

    with transaction.atomic():
        if purpose == "signup":
            user = _create_signed_up_user(pending)
        else:
            user = User.objects.select_for_update().filter(pk=pending["user_id"], is_active=True).first()
            if user is None:
                raise webauthn_errors.InvalidState(detail="This account is no longer active.")
        if purpose == "enroll":
            consumed = OperatorEnrollment.objects.filter(
                token_hash=pending["enrollment_token_hash"], used_at__isnull=True, expires_at__gt=timezone.now()
            ).update(used_at=timezone.now())
            if not consumed:
                raise PermissionDenied("This enrollment link was used or has expired.", code="enrollment_invalid")
        try:
            # A savepoint: on PostgreSQL a failed INSERT would poison the outer transaction.
            with transaction.atomic(), rewrite_exceptions(logger=log):
                device = PasskeyHelper().register_complete(user=user, state=pending["state"], data=credential)
        except IntegrityError:
            # The credential id is unique: an authenticator (or a forger) sent
            # the id of a passkey that is already registered.
            raise Conflict("This passkey is already registered.", code="passkey_exists") from None
        device.name = name or f"Passkey {user.webauthncredential_set.count()}"
        device.save(update_fields=["name"])
        if user.signup_state != User.SignupState.ACTIVE:
            user.signup_state = User.SignupState.ACTIVE
            user.save(update_fields=["signup_state"])
        ledger.record(
            kind=f"identity.passkey.{'added' if purpose == 'add' else purpose}",
            actor=ledger.actor_label(user),
            subject=f"user:{user.pk}",
            payload={"passkey": device.pk, "aaguid": device.aaguid},
        )
        if purpose != "add":
            _record_signin(user, device)
    return device, purpose != "add"


def _create_signed_up_user(pending: dict) -> User:
    user = User.objects.create_user(display_name=pending["display_name"], signup_state=User.SignupState.ACTIVE)
    try:
        with transaction.atomic():
            WebAuthnUserHandle.objects.create(user=user, handle_hex=pending["user_handle"])
    except IntegrityError:
        # The same sign-up completed in another request a moment ago.
        raise webauthn_errors.InvalidState(detail="This sign-up was already completed. Sign in instead.") from None
    return user


def _check_origin(credential: dict) -> None:
    """Name the setting when the browser's page is not at the configured
    origin: py_webauthn's own refusal says only "invalid response", which
    leaves a newcomer on another port guessing."""
    response = credential.get("response")
    raw = _decode_base64url(response.get("clientDataJSON")) if isinstance(response, dict) else None
    try:
        origin = json.loads(raw).get("origin") if raw else None
    except (ValueError, AttributeError):
        return  # malformed client data: py_webauthn refuses it with its own error
    allowed = settings.OTP_WEBAUTHN_ALLOWED_ORIGINS
    if isinstance(origin, str) and origin not in allowed:
        raise InvalidInput(
            f"This page was opened at {origin}, but InfraSim expects {' or '.join(allowed)}. "
            f"Open {allowed[0]} instead, or set WEBAUTHN_RP_ORIGIN (or INFRASIM_PORT) to the address you use "
            "and restart InfraSim.",
            field="credential",
            code="origin_mismatch",
        )


def _with_clean_extension_results(credential: dict) -> dict:
    """clientExtensionResults is unsigned and only informs the passkey list
    (credProps.rk: "discoverable"); keep just a well-formed rk, since the
    helper indexes into whatever it is given."""
    results = credential.get("clientExtensionResults")
    cred_props = results.get("credProps") if isinstance(results, dict) else None
    rk = cred_props.get("rk") if isinstance(cred_props, dict) else None
    clean = {"credProps": {"rk": rk}} if isinstance(rk, bool) else {}
    return {**credential, "clientExtensionResults": clean}


# --- Passkey sign-in ------------------------------------------------------------


def passkey_authentication_begin() -> tuple[dict, dict]:
    """PublicKeyCredentialRequestOptionsJSON with an empty allowCredentials
    (passkeys are discoverable, so the server names no account), and the
    state to keep until the answer arrives."""
    return PasskeyHelper().authenticate_begin(user=None, require_user_verification=True)


def passkey_authentication_complete(*, state: dict | None, credential: dict) -> tuple[User, WebAuthnCredential]:
    """Verify an AuthenticationResponseJSON; returns the account and the
    passkey it proved, for the caller to sign in (or re-check) the session."""
    if not state:
        raise webauthn_errors.InvalidState()
    if not isinstance(credential, dict):
        raise InvalidInput("Expected the AuthenticationResponseJSON object.", field="credential", code="invalid_type")
    _check_origin(credential)
    response = credential.get("response")
    if isinstance(response, dict) and response.get("userHandle") and _decode_base64url(response["userHandle"]) is None:
        # py_webauthn decodes userHandle outside its own error handling.
        raise webauthn_errors.UnprocessableEntity(code="invalid_user_handle", detail="userHandle is not base64url.")
    with transaction.atomic(), rewrite_exceptions(logger=log):
        device = PasskeyHelper().authenticate_complete(user=None, state=state, data=credential)
        # The server named no credential, so the response must say whose it
        # is, and that must be the passkey's owner (WebAuthn §7.2 step 6).
        # Raised inside the transaction: the new sign count is not kept.
        _check_user_handle(device, credential)
    user = device.user
    if not device.confirmed:
        raise webauthn_errors.CredentialDisabled()
    if not user.is_active or user.signup_state != User.SignupState.ACTIVE:
        raise webauthn_errors.UserDisabled()
    _record_signin(user, device)
    return user, device


def _decode_base64url(value) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64url_to_bytes(value)
    except ValueError:  # binascii.Error
        return None


def _check_user_handle(device: WebAuthnCredential, credential: dict) -> None:
    response = credential.get("response")
    handle = _decode_base64url(response.get("userHandle")) if isinstance(response, dict) else None
    owner_handle = WebAuthnUserHandle.objects.filter(user_id=device.user_id).values_list("handle_hex", flat=True).first()
    if not handle or owner_handle is None or not secrets.compare_digest(handle.hex(), owner_handle):
        raise webauthn_errors.UnprocessableEntity(
            code="user_handle_mismatch", detail="The passkey's user handle does not match its account."
        )


def _record_signin(user: User, device: WebAuthnCredential) -> None:
    ledger.record(
        kind="identity.signin", actor=ledger.actor_label(user), subject=f"user:{user.pk}", payload={"passkey": device.pk}
    )


# --- Sessions ---------------------------------------------------------------------


@transaction.atomic
def sessions_end_others(*, actor: User, keep_session_key: str | None) -> int:
    """Sign the actor out everywhere but the session they are using."""
    others = UserSession.objects.filter(user=actor)
    if keep_session_key:
        others = others.exclude(session_key=stored_key(keep_session_key))
    ended, _ = others.delete()
    ledger.record(
        kind="identity.sessions.ended", actor=ledger.actor_label(actor), subject=f"user:{actor.pk}",
        payload={"sessions": ended, "reason": "sign out everywhere else"},
    )
    return ended


# --- Managing passkeys ------------------------------------------------------------


def _own_passkey(actor: User, passkey_id) -> WebAuthnCredential:
    passkey = WebAuthnCredential.objects.filter(pk=passkey_id, user=actor).first()
    if passkey is None:
        raise NotFound("No such passkey.")
    return passkey


@transaction.atomic
def passkey_rename(*, actor: User, passkey_id: int, name: str) -> WebAuthnCredential:
    passkey = _own_passkey(actor, passkey_id)
    passkey.name = clean_name(name, field="name", max_length=PASSKEY_NAME_MAX)
    passkey.save(update_fields=["name"])
    return passkey


@transaction.atomic
def passkey_delete(*, actor: User, passkey_id: int) -> None:
    # Lock the account row so two deletions in parallel cannot both pass the
    # "not the last one" check.
    User.objects.select_for_update().get(pk=actor.pk)
    passkey = _own_passkey(actor, passkey_id)
    if WebAuthnCredential.objects.filter(user=actor).count() <= 1:
        raise Conflict("You cannot delete your last passkey: you would be locked out.", code="last_passkey")
    passkey.delete()
    # Whoever signed in with this passkey is signed out: deleting a lost or
    # stolen passkey must also end what it opened.
    ended, _ = UserSession.objects.filter(user=actor, passkey_id=passkey_id).delete()
    ledger.record(
        kind="identity.passkey.deleted",
        actor=ledger.actor_label(actor),
        subject=f"user:{actor.pk}",
        payload={"passkey": passkey_id, "sessions_ended": ended},
    )


# --- API tokens -----------------------------------------------------------------

TOKEN_PREFIX = "isk_"


@transaction.atomic
def api_token_create(
    *, actor: User, name: str, scope: str = ApiToken.Scope.READ, expires_at: datetime | None = None
) -> tuple[ApiToken, str]:
    """Create a token and return it with its secret, which is never stored or shown again."""
    name = clean_name(name, field="name", max_length=TOKEN_NAME_MAX)
    if scope not in ApiToken.Scope.values:
        raise InvalidInput(f"Scope is one of: {', '.join(ApiToken.Scope.values)}.", field="scope", code="invalid_choice")
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidInput("The expiry must be in the future.", field="expires_at", code="in_past")
    if ApiToken.objects.filter(user=actor, name=name).exists():
        raise Conflict(f"You already have a token named '{name}'.", field="name", code="duplicate_name")
    if ApiToken.objects.filter(user=actor, revoked_at__isnull=True).count() >= settings.API_TOKEN_MAX_PER_USER:
        raise Conflict("Too many active tokens: revoke one first.", field="name", code="quota")
    prefix = secrets.token_hex(4)
    secret = f"{TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    token = ApiToken.objects.create(
        user=actor, name=name, scope=scope, prefix=prefix, secret_hash=_hash_secret(secret), expires_at=expires_at
    )
    ledger.record(
        kind="identity.token.created",
        actor=ledger.actor_label(actor),
        subject=f"api_token:{token.pk}",
        payload={"name": name, "scope": scope, "expires_at": expires_at.isoformat() if expires_at else None},
    )
    return token, secret


@transaction.atomic
def api_token_revoke(*, actor: User, token_id: int) -> ApiToken:
    token = ApiToken.objects.visible_to(actor).select_for_update().filter(pk=token_id).first()
    if token is None:
        raise NotFound("No such token.")
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        ledger.record(
            kind="identity.token.revoked",
            actor=ledger.actor_label(actor),
            subject=f"api_token:{token.pk}",
            payload={"owner": token.user_id},
        )
    return token


def api_token_authenticate(raw: str) -> ApiToken | None:
    """The token a bearer secret belongs to, if it is usable now."""
    if not raw.startswith(TOKEN_PREFIX):
        return None
    prefix = raw[len(TOKEN_PREFIX) :].split("_", 1)[0]
    token = ApiToken.objects.select_related("user").filter(prefix=prefix).first()
    if token is None or not secrets.compare_digest(token.secret_hash, _hash_secret(raw)):
        return None
    now = timezone.now()
    if not token.is_usable(now) or not token.user.is_active:
        return None
    # Coarse last-use stamp: one write a minute at most per token.
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token


# --- Operators and housekeeping -----------------------------------------------------


@transaction.atomic
def operator_create(*, display_name: str) -> tuple[User, str]:
    """Create a staff account with no passkey yet, and return the one-time
    enrollment link through which a person registers its first passkey."""
    name = clean_name(display_name, field="display_name", max_length=DISPLAY_NAME_MAX)
    user = User.objects.create_user(display_name=name, is_staff=True, is_superuser=True)
    token = operator_enrollment_issue(user=user)
    ledger.record(kind="identity.operator.created", actor="system", subject=f"user:{user.pk}", payload={"name": name})
    return user, token


def operator_enrollment_issue(*, user: User, actor: User | None = None) -> str:
    """A one-time link to register a passkey for `user`: an operator's first
    passkey, or account recovery issued by an operator."""
    token = secrets.token_urlsafe(32)
    enrollment = OperatorEnrollment.objects.create(
        user=user,
        token_hash=_hash_secret(token),
        expires_at=timezone.now() + timedelta(seconds=settings.OPERATOR_ENROLLMENT_SECONDS),
    )
    ledger.record(
        kind="identity.enrollment.issued",
        actor=ledger.actor_label(actor),
        subject=f"user:{user.pk}",
        payload={"enrollment": enrollment.pk, "expires_at": enrollment.expires_at.isoformat()},
    )
    return token


def enrollment_url(token: str) -> str:
    return f"{settings.WEBAUTHN_RP_ORIGIN}/enroll/{token}/"


def enrollment_is_valid(token: str) -> bool:
    return OperatorEnrollment.objects.filter(
        token_hash=_hash_secret(token), used_at__isnull=True, expires_at__gt=timezone.now()
    ).exists()


@transaction.atomic
def purge_abandoned_signups(*, now: datetime | None = None) -> int:
    """Delete accounts whose first passkey never arrived: sign-ups after
    SIGNUP_ABANDON_SECONDS, operators once every enrollment link expired."""
    now = now or timezone.now()
    awaiting = User.objects.filter(signup_state=User.SignupState.AWAITING_PASSKEY, webauthncredential__isnull=True)
    stale_signups = awaiting.filter(
        is_staff=False, date_joined__lt=now - timedelta(seconds=settings.SIGNUP_ABANDON_SECONDS)
    )
    stale_operators = awaiting.filter(is_staff=True).exclude(enrollments__expires_at__gt=now, enrollments__used_at=None)
    ids = list(stale_signups.values_list("pk", flat=True)) + list(stale_operators.values_list("pk", flat=True))
    if ids:
        User.objects.filter(pk__in=ids).delete()
        ledger.record(kind="identity.signups.purged", actor="system", subject="user:*", payload={"users": ids})
    return len(ids)
