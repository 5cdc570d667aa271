"""Thin Celery tasks: take ids, call a service, return quietly if the row is gone."""

from celery import shared_task

from identity import provisioning, services


@shared_task(name="identity.tasks.provision_step", acks_late=True)
def provision_step(step_id: int) -> str | None:
    step = provisioning.identity_provision_step(step_id=step_id)
    return step.status if step else None


@shared_task(name="identity.tasks.deprovision_identity", acks_late=True)
def deprovision_identity(identity_id: int, attempt: int = 1) -> None:
    provisioning.identity_deprovision(identity_id=identity_id, attempt=attempt)


@shared_task(name="identity.tasks.purge_abandoned_signups")
def purge_abandoned_signups() -> int:
    return services.purge_abandoned_signups()
