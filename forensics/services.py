"""Memory acquisition: who may capture what, the job request, the passkey
co-signature, and signing keys. Views, the API, the admin and the worker all
call these; none of them takes an HttpRequest."""

from __future__ import annotations

import base64
import hashlib
import json

from django.conf import settings
from django.db import transaction
from webauthn import verify_authentication_response
from webauthn.helpers import bytes_to_base64url, parse_authentication_credential_json
from webauthn.helpers.exceptions import InvalidAuthenticationResponse, InvalidJSONStructure
from webauthn.helpers.structs import PublicKeyCredentialDescriptor, UserVerificationRequirement

from appliances import services as appliance_services
from appliances.models import Appliance, Operation
from forensics import attestation, keys, ledger
from forensics.models import Acquisition
from identity.models import User
from infrasim_site.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from infrasim_site.events import publish_to_user
from infrasim_site.text import clean_name

CASE_REF_MAX = 100
REASON_MAX = 2000


def may_acquire(user: User, appliance: Appliance | None = None) -> bool:
    """Operators capture any appliance; owners their own where policy allows."""
    if not getattr(user, "is_authenticated", False):
        return False
    if user.is_staff:
        return True
    return settings.FORENSICS_OWNERS_MAY_ACQUIRE and (appliance is None or appliance.owner_id == user.pk)


def _format(value) -> str:
    if value in (None, ""):
        return Acquisition.Format.ELF
    if value not in Acquisition.Format.values:
        raise InvalidInput(f"Choose one of: {', '.join(Acquisition.Format.values)}.", field="format",
                           code="invalid_choice")
    return value


def acquisition_request(*, actor: User, appliance_id, case_ref, reason, format=None) -> Acquisition:
    """Queue a capture of a running appliance's memory. The dump runs as the
    appliance's job (one at a time, on its host), so it never races a
    migration or a shutdown."""
    case_ref = clean_name(case_ref, field="case_ref", max_length=CASE_REF_MAX)
    reason = clean_name(reason, field="reason", max_length=REASON_MAX)
    dump_format = _format(format)
    appliance = Appliance.objects.visible_to(actor).filter(pk=appliance_id).first() if str(
        appliance_id).isdigit() else None
    if appliance is None:
        raise NotFound("No such appliance.", field="appliance")
    if not may_acquire(actor, appliance):
        raise PermissionDenied("Memory capture is for operators on this server.", field="appliance",
                               code="forensics_operators_only")
    with transaction.atomic():
        operation = appliance_services.appliance_act(
            actor=actor, appliance_id=appliance.pk, kind=Operation.Kind.MEMORY_DUMP, params={"format": dump_format})
        acquisition = Acquisition.objects.create(
            requested_by=actor, appliance=appliance, operation=operation, case_ref=case_ref, reason=reason,
            format=dump_format,
        )
        Operation.objects.filter(pk=operation.pk).update(params={"format": dump_format, "acquisition": acquisition.pk})
        ledger.record(kind="forensics.acquisition.requested", actor=ledger.actor_label(actor),
                      subject=f"acquisition:{acquisition.pk}", concerns=actor.pk,
                      payload={"appliance": appliance.pk, "case_ref": case_ref, "format": dump_format})
    return acquisition


def visible_acquisitions(user: User):
    return Acquisition.objects.visible_to(user).select_related(
        "operation", "appliance", "requested_by", "signing_key", "requested_by__identity")


def acquisition_get(*, actor: User, acquisition_id) -> Acquisition:
    found = visible_acquisitions(actor).filter(pk=acquisition_id).first() if str(acquisition_id).isdigit() else None
    if found is None:
        raise NotFound("No such acquisition.")
    return found


def completed(*, actor: User, acquisition_id) -> Acquisition:
    acquisition = acquisition_get(actor=actor, acquisition_id=acquisition_id)
    if acquisition.status != Acquisition.Phase.COMPLETE:
        raise Conflict(f"The acquisition is {acquisition.status}; its evidence is not ready.", field="status",
                       code="not_complete")
    return acquisition


def push(acquisition: Acquisition) -> None:
    """The requester's open pages follow the capture live."""
    if acquisition.requested_by_id:
        publish_to_user(acquisition.requested_by_id, kind="forensics.acquisition", data={
            "id": acquisition.pk, "status": acquisition.status, "progress": acquisition.progress,
            "sha256": acquisition.sha256, "error": acquisition.last_error[:300],
        })


# --- The passkey co-signature ----------------------------------------------------------


def _cosignable(actor: User, acquisition_id) -> Acquisition:
    """Only the person who captured the evidence co-signs it: to anyone
    else, operators included, there is nothing here to sign."""
    acquisition = Acquisition.objects.filter(requested_by=actor, pk=acquisition_id).first() if str(
        acquisition_id).isdigit() else None
    if acquisition is None:
        raise NotFound("No such acquisition.")
    if acquisition.status != Acquisition.Phase.COMPLETE:
        raise Conflict(f"The acquisition is {acquisition.status}; there is nothing to co-sign yet.", field="status",
                       code="not_complete")
    if acquisition.cosignature:
        raise Conflict("This attestation is already co-signed.", code="already_cosigned")
    return acquisition


def cosign_options(*, actor: User, acquisition_id) -> dict:
    """WebAuthn request options whose challenge is SHA-256(PAE(envelope)):
    the assertion then signs exactly this attestation, so it needs no stored
    challenge and cannot be replayed onto another one."""
    from identity.passkeys import PasskeyHelper  # the relying party comes from settings
    from django_otp_webauthn.models import WebAuthnCredential

    acquisition = _cosignable(actor, acquisition_id)
    helper = PasskeyHelper()
    rp = helper.get_relying_party()
    credentials = WebAuthnCredential.get_credential_descriptors_for_user(actor)
    return {
        "challenge": bytes_to_base64url(attestation.cosign_challenge(acquisition.envelope)),
        "rpId": rp.id,
        "timeout": 120000,
        "userVerification": UserVerificationRequirement.REQUIRED.value,
        "allowCredentials": [
            {"type": "public-key", "id": bytes_to_base64url(descriptor.id)}
            for descriptor in credentials if isinstance(descriptor, PublicKeyCredentialDescriptor)
        ],
    }


def acquisition_cosign(*, actor: User, acquisition_id, credential: dict | str) -> Acquisition:
    """Verify the requester's passkey assertion over the envelope and keep it
    in the bundle (and in the log: its hash, with the attestation's)."""
    from django_otp_webauthn.models import WebAuthnCredential
    from identity.passkeys import PasskeyHelper

    acquisition = _cosignable(actor, acquisition_id)
    try:
        parsed = parse_authentication_credential_json(credential if isinstance(credential, str) else json.dumps(credential))
    except (InvalidJSONStructure, ValueError, TypeError, KeyError) as exc:
        raise InvalidInput(f"Not a WebAuthn assertion: {exc}", field="credential", code="invalid") from None
    stored = WebAuthnCredential.objects.filter(user=actor, credential_id_sha256=WebAuthnCredential.get_credential_id_sha256(
        parsed.raw_id)).first()
    if stored is None:
        raise InvalidInput("That passkey is not one of yours.", field="credential", code="unknown_credential")
    helper = PasskeyHelper()
    rp = helper.get_relying_party()
    try:
        verified = verify_authentication_response(
            credential=parsed,
            expected_challenge=attestation.cosign_challenge(acquisition.envelope),
            expected_rp_id=rp.id,
            expected_origin=list(settings.OTP_WEBAUTHN_ALLOWED_ORIGINS),
            credential_public_key=bytes(stored.public_key),
            credential_current_sign_count=stored.sign_count,
            require_user_verification=True,
        )
    except InvalidAuthenticationResponse as exc:
        raise InvalidInput(f"The passkey's signature does not verify: {exc}", field="credential",
                           code="invalid_assertion") from None
    response = parsed.response
    origin = json.loads(response.client_data_json)["origin"]  # verified above to be an allowed origin
    cosignature = {
        "credentialId": bytes_to_base64url(parsed.raw_id),
        "publicKey": base64.b64encode(bytes(stored.public_key)).decode(),
        "authenticatorData": base64.b64encode(response.authenticator_data).decode(),
        "clientDataJSON": base64.b64encode(response.client_data_json).decode(),
        "signature": base64.b64encode(response.signature).decode(),
        "userHandle": bytes_to_base64url(response.user_handle) if response.user_handle else None,
        "rpId": rp.id,
        "origin": origin,
    }
    with transaction.atomic():
        locked = Acquisition.objects.select_for_update().get(pk=acquisition.pk)
        if locked.cosignature:
            raise Conflict("This attestation is already co-signed.", code="already_cosigned")
        locked.cosignature = cosignature
        locked.save(update_fields=["cosignature"])
        WebAuthnCredential.objects.filter(pk=stored.pk).update(sign_count=verified.new_sign_count)
        ledger.record(kind="forensics.attestation.cosigned", actor=ledger.actor_label(actor),
                      subject=f"acquisition:{acquisition.pk}", concerns=actor.pk, payload={
                          "subject_sha256": locked.sha256,
                          "cosignature_sha256": hashlib.sha256(json.dumps(cosignature, sort_keys=True).encode()).hexdigest(),
                          "credential": cosignature["credentialId"],
                      })
    return locked


def signing_key_rotate(*, actor: User, user_id=None):
    """A person rotates their own key; operators anyone's."""
    target = actor if user_id in (None, "", actor.pk) else None
    if target is None:
        if not actor.is_staff:
            raise NotFound("No such user.", field="user")
        target = User.objects.filter(pk=user_id).first() if str(user_id).isdigit() else None
        if target is None:
            raise NotFound("No such user.", field="user")
    return keys.signing_key_rotate(actor=actor, user=target)


# --- The transparency log's public reads -----------------------------------------------


def _whole(value, field: str, *, minimum: int) -> int:
    try:
        number = int(str(value))
    except (TypeError, ValueError):
        raise InvalidInput("A whole number is required.", field=field, code="invalid") from None
    if number < minimum:
        raise InvalidInput(f"Must be at least {minimum}.", field=field, code="min_value")
    return number


def _within_log(size: int, field: str) -> int:
    current = ledger.tree_head()["size"]
    if size > current:
        raise InvalidInput(f"The log holds {current} entries.", field=field, code="beyond_log")
    return size


def log_inclusion_proof(*, index, tree_size) -> dict:
    index = _whole(index, "index", minimum=0)
    tree_size = _within_log(_whole(tree_size, "tree_size", minimum=1), "tree_size")
    if index >= tree_size:
        raise InvalidInput(f"Index {index} is not in a tree of {tree_size}.", field="index", code="beyond_tree")
    return {"index": index, "tree_size": tree_size, "leaf_hash": ledger.entry_at(index).leaf_hash,
            "hashes": ledger.inclusion_proof(index, tree_size)}


def log_consistency_proof(*, first, second) -> dict:
    first = _whole(first, "first", minimum=1)
    second = _within_log(_whole(second, "second", minimum=1), "second")
    if first > second:
        raise InvalidInput("first must not be larger than second.", field="first", code="beyond_tree")
    return {"first": first, "second": second, "hashes": ledger.consistency_proof(first, second)}
