"""Handles and what they provision: the services behind claiming a handle,
checking availability, provisioning, retrying and cancelling.

Provisioning is a state machine with a row per step (dns, matrix, s3). Each
step runs as its own Celery task, claimed with a conditional update, retried
with exponential backoff on transient errors and failed at once on permanent
ones. Backends are idempotent and mark what they create as InfraSim's, so a
step redone after a worker died (acks_late) finishes without duplicates.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from forensics import ledger
from identity import handles
from identity.models import Identity, ProvisioningStep, User
from identity.providers import provider_for
from identity.serializers import identity_payload
from identity.providers.errors import PermanentProviderError, ProviderError, TransientProviderError
from infrasim_site.errors import Conflict, InvalidInput
from infrasim_site.events import publish_to_user
from infrasim_site.queueing import enqueue_on_commit
from infrasim_site.steps import Claim, retry_later

log = logging.getLogger(__name__)
Step = ProvisioningStep.Status


def _push(identity: Identity) -> None:
    publish_to_user(identity.user_id, kind="identity.changed", data=identity_payload(identity))


def _validated(handle: str) -> str:
    try:
        return handles.validate_handle(handle)
    except ValidationError as exc:
        raise InvalidInput(exc.messages[0], field="handle", code=exc.code) from None


def _taken(handle: str, holder: str) -> Conflict:
    if holder == handle:
        return Conflict(f"The handle '{handle}' is taken.", field="handle", code="taken")
    return Conflict(f"'{handle}' looks too much like the existing handle '{holder}'.", field="handle", code="confusable")


# --- Claiming and availability ------------------------------------------------------


def identity_claim(*, actor: User, handle: str) -> Identity:
    """Reserve a handle for the actor and start provisioning it: 400 naming
    the broken rule, 409 when the handle (or a look-alike of it) belongs to
    somebody else. Claiming the handle one already holds changes nothing."""
    normalized = _validated(handle)
    existing = Identity.objects.filter(user=actor).first()
    if existing:
        if existing.handle == normalized:
            return existing
        raise Conflict(f"You already hold the handle '{existing.handle}'.", field="handle", code="already_claimed")
    skeleton = handles.skeleton(normalized)
    clash = Identity.objects.filter(handle_skeleton=skeleton).values_list("handle", flat=True).first()
    if clash:
        raise _taken(normalized, clash)
    try:
        with transaction.atomic():
            identity = Identity(user=actor, handle=normalized, handle_skeleton=skeleton)
            identity.full_clean(validate_constraints=False)
            identity.save()
            ledger.record(
                kind="identity.handle.claimed",
                actor=ledger.actor_label(actor),
                subject=f"identity:{identity.pk}",
                payload={"handle": normalized},
            )
            # In the claim's transaction, so "claimed" precedes "requested"
            # in the ledger and the first page push already says "pending".
            identity = identity_start_provisioning(actor=actor)
    except IntegrityError:
        # Lost a race to a parallel claim: the database constraint decided.
        if Identity.objects.filter(user=actor).exists():
            raise Conflict("You already hold a handle.", field="handle", code="already_claimed") from None
        clash = Identity.objects.filter(handle_skeleton=skeleton).values_list("handle", flat=True).first()
        raise _taken(normalized, clash or normalized) from None
    return identity


def identity_availability(*, handle: str) -> dict:
    """Ask the database and every configured backend whether a handle is
    free, before the user commits to it. A backend that cannot answer says so."""
    normalized = _validated(handle)
    clash = Identity.objects.filter(handle_skeleton=handles.skeleton(normalized)).values_list("handle", flat=True).first()
    checks = {"database": "available" if clash is None else ("taken" if clash == normalized else f"looks like {clash}")}
    for kind in ProvisioningStep.Kind.values:
        provider = provider_for(kind)
        if provider is None:
            checks[kind] = "not_configured"
            continue
        try:
            checks[kind] = "available" if provider.is_available(normalized) else "taken"
        except ProviderError as exc:
            checks[kind] = f"unknown: {exc}"
    available = all(value in {"available", "not_configured"} for value in checks.values())
    return {"handle": normalized, "available": available, "checks": checks}


# --- Provisioning ---------------------------------------------------------------------


@transaction.atomic
def identity_start_provisioning(*, actor: User, requested_by: User | None = None) -> Identity:
    """Queue every step that is not done yet. Starting twice is harmless;
    starting after a failure retries only what failed."""
    identity = Identity.objects.select_for_update().filter(user=actor).first()
    if identity is None:
        raise Conflict("Claim a handle first.", field="handle", code="no_handle")
    if identity.status == Identity.Status.CANCELLING:
        raise Conflict("This identity is being cancelled.", field="handle", code="cancelling")
    for kind in ProvisioningStep.Kind.values:
        ProvisioningStep.objects.get_or_create(identity=identity, kind=kind)
    identity.steps.exclude(status__in=[Step.SUCCEEDED, Step.RUNNING]).update(
        status=Step.PENDING, attempts=0, last_error="", next_attempt_at=None
    )
    queued = list(identity.steps.filter(status=Step.PENDING).values_list("pk", flat=True))
    if queued:
        identity.status = Identity.Status.PENDING
        identity.save(update_fields=["status", "updated_at"])
        ledger.record(
            kind="identity.provisioning.requested",
            actor=ledger.actor_label(requested_by or actor),
            subject=f"identity:{identity.pk}",
            payload={"handle": identity.handle, "steps": sorted(identity.steps.filter(pk__in=queued).values_list("kind", flat=True))},
        )
    # Pushed before the tasks are queued (on-commit callbacks run in order),
    # so "pending" never reaches a page after a worker's "provisioning".
    _push(identity)
    for pk in queued:
        enqueue_on_commit(ProvisioningStep.task_name, (pk,))
    return identity


def identity_provision_step(*, step_id: int) -> ProvisioningStep | None:
    """Worker side of one step. Claims it, calls the backend and records the
    outcome; the step model schedules the retry of a transient error."""
    claim = ProvisioningStep.claim(step_id, unless=Q(identity__status=Identity.Status.CANCELLING))
    step = ProvisioningStep.objects.select_related("identity__user").filter(pk=step_id).first()
    if step is None or claim is Claim.NOT_OURS:
        return step  # gone, finished by an earlier delivery, or being cancelled
    identity = step.identity
    with transaction.atomic():
        Identity.objects.filter(pk=identity.pk, status=Identity.Status.PENDING).update(
            status=Identity.Status.PROVISIONING, updated_at=timezone.now()
        )
        ledger.record(kind=f"identity.provisioning.{step.kind}.started", actor="system",
                      subject=f"identity:{identity.pk}", payload={"attempt": step.attempts})
        identity.refresh_from_db()
        _push(identity)

    # The backend is called outside any transaction: a write transaction
    # (SQLite takes its lock at BEGIN) held across a slow or hanging backend
    # would stall every other writer, the console's included.
    provider = provider_for(step.kind)
    outcome, text = Step.NOT_CONFIGURED, ""
    if provider is not None:
        try:
            outcome, text = Step.SUCCEEDED, provider.provision(identity)[:300]
        except TransientProviderError as exc:
            outcome, text = Step.RETRYING, str(exc)
        except PermanentProviderError as exc:
            outcome, text = Step.FAILED, str(exc)
        except Exception as exc:  # an unexpected backend answer fails the step visibly, not the worker
            log.exception("provisioning step %s crashed", step_id)
            outcome, text = Step.FAILED, f"unexpected error: {exc}"
    with transaction.atomic():
        if outcome == Step.RETRYING:
            step.fail_or_retry(text, detail="")
        elif outcome == Step.FAILED:
            step.settle(status=Step.FAILED, error=text, detail="")
        else:
            step.settle(status=outcome, detail=text)
        ledger.record(
            kind=f"identity.provisioning.{step.kind}.{step.status}",
            actor="system",
            subject=f"identity:{identity.pk}",
            payload={"attempt": step.attempts, "detail": step.detail, "error": step.last_error[:500]},
        )
        _settle(identity)
    return step


def _settle(identity: Identity) -> None:
    """Derive the identity's status from its steps."""
    statuses = set(identity.steps.values_list("status", flat=True))
    if statuses & {Step.PENDING, Step.RUNNING, Step.RETRYING}:
        status = Identity.Status.PROVISIONING
    elif statuses == {Step.SUCCEEDED}:
        status = Identity.Status.ACTIVE
    elif Step.FAILED in statuses:
        status = Identity.Status.FAILED
    else:
        status = Identity.Status.INCOMPLETE
    Identity.objects.filter(pk=identity.pk).exclude(status=Identity.Status.CANCELLING).update(
        status=status, updated_at=timezone.now()
    )
    identity.refresh_from_db()
    _push(identity)


# --- Cancelling ---------------------------------------------------------------------------


@transaction.atomic
def identity_cancel(*, actor: User, requested_by: User | None = None) -> Identity:
    """Give the handle up: remove what provisioning created, then the identity."""
    identity = Identity.objects.select_for_update().filter(user=actor).first()
    if identity is None:
        raise Conflict("You hold no handle.", field="handle", code="no_handle")
    identity.status = Identity.Status.CANCELLING
    identity.save(update_fields=["status", "updated_at"])
    ledger.record(
        kind="identity.cancel.requested",
        actor=ledger.actor_label(requested_by or actor),
        subject=f"identity:{identity.pk}",
        payload={"handle": identity.handle},
    )
    _push(identity)  # before the task is queued, as in identity_start_provisioning
    enqueue_on_commit("identity.tasks.deprovision_identity", (identity.pk,))
    return identity


def identity_deprovision(*, identity_id: int, attempt: int = 1) -> float | None:
    """Worker side of a cancel: undo each step that may have created
    something (backends only remove what carries InfraSim's mark), then delete
    the identity. When a backend was unreachable it queues itself again and
    returns the delay."""
    identity = Identity.objects.select_related("user").filter(pk=identity_id, status=Identity.Status.CANCELLING).first()
    if identity is None:
        return None

    def again(minimum: float = 0) -> float | None:
        return retry_later(
            "identity.tasks.deprovision_identity", (identity_id,), attempt=attempt, minimum=minimum,
            base=settings.PROVISIONING_BACKOFF_SECONDS, max_attempts=settings.PROVISIONING_MAX_ATTEMPTS,
        )

    if identity.steps.filter(status=Step.RUNNING).exists():
        # A backend call is in flight; undoing now could miss what it is
        # about to create. Come back when it has finished (or, once the
        # attempts are spent, undo what is there).
        delay = again(minimum=1)
        if delay is not None:
            return delay
    results, retry = {}, False
    for step in identity.steps.exclude(status__in=[Step.NOT_CONFIGURED, Step.REMOVED]):
        provider = provider_for(step.kind)
        if provider is None:
            results[step.kind] = "not configured"
            continue
        ProvisioningStep.objects.filter(pk=step.pk).update(status=Step.REMOVING)
        try:
            results[step.kind] = provider.deprovision(identity)
        except TransientProviderError as exc:
            retry = True
            results[step.kind] = f"will retry: {exc}"
            ProvisioningStep.objects.filter(pk=step.pk).update(last_error=str(exc)[:2000])
            continue
        except PermanentProviderError as exc:
            results[step.kind] = f"failed: {exc}"
        ProvisioningStep.objects.filter(pk=step.pk).update(status=Step.REMOVED, detail=results[step.kind][:300])
    if retry:
        delay = again()
        if delay is not None:
            _push(identity)
            return delay
    with transaction.atomic():
        ledger.record(
            kind="identity.cancelled",
            actor="system",
            subject=f"identity:{identity.pk}",
            payload={"handle": identity.handle, "results": results},
        )
        user_id = identity.user_id
        identity.delete()
        publish_to_user(user_id, kind="identity.changed", data=None)
    return None
