from celery import shared_task

from identity import services


@shared_task(name="identity.tasks.provision_identity", acks_late=True)
def provision_identity(identity_id: int) -> str | None:
    identity = services.identity_provision(identity_id=identity_id)
    return identity.status if identity else None


@shared_task(name="identity.tasks.purge_abandoned_signups")
def purge_abandoned_signups() -> int:
    return services.purge_abandoned_signups()
