"""Thin Celery tasks for appliances. Jobs, boot watches, console reads and
reconciling run on the appliance's host queue, where libvirt and the files are."""

from celery import shared_task

from appliances import jobs
from appliances.models import Appliance, Host


@shared_task(name="appliances.tasks.run_operation", acks_late=True)
def run_operation(operation_id: int) -> None:
    jobs.run_operation(operation_id)


@shared_task(name="appliances.tasks.cache_image", acks_late=True)
def cache_image(entry_id: int) -> None:
    jobs.cache_image(entry_id)


@shared_task(name="appliances.tasks.watch_boot", acks_late=True)
def watch_boot(appliance_id: int) -> None:
    jobs.watch_boot(appliance_id)


@shared_task(name="appliances.tasks.console_log")
def console_log(appliance_id: int, limit: int = jobs.CONSOLE_TAIL_BYTES) -> str:
    appliance = Appliance.objects.select_related("host").filter(pk=appliance_id).first()
    return jobs.console_log(appliance, limit) if appliance else ""


@shared_task(name="appliances.tasks.probe_host", acks_late=True)
def probe_host(host_id: int) -> None:
    jobs.probe_host(host_id)


@shared_task(name="appliances.tasks.reconcile_host", acks_late=True)
def reconcile_host(host_id: int) -> dict:
    return jobs.reconcile_host(host_id)


@shared_task(name="appliances.tasks.reconcile_hosts")
def reconcile_hosts() -> int:
    """Periodic: each host's worker compares its libvirt with the database."""
    hosts = list(Host.objects.values_list("pk", "queue"))
    for pk, queue in hosts:
        reconcile_host.apply_async((pk,), queue=queue)
    return len(hosts)
