from celery import shared_task


@shared_task(name="infrasim_site.tasks.ping")
def ping(payload: str) -> dict:
    """Round trip for health checks: proves a worker consumes from the broker."""
    import socket

    return {"echo": payload, "worker_host": socket.gethostname()}
