"""The one way services queue work: by task name, after commit.

Sending by name (Celery's `send_task`) means a service never imports its own
app's tasks module, so there is no services <-> tasks import cycle; sending
after commit means a worker never picks up a row the database does not hold
yet (Zulip's `queue_event_on_commit`). Work bound to a host (a gateway, a
hypervisor) names that host's queue; everything else goes to the task's app
queue from CELERY_TASK_ROUTES.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction


def enqueue_on_commit(
    task_name: str,
    args: tuple | list = (),
    kwargs: dict[str, Any] | None = None,
    *,
    queue: str | None = None,
    eta: datetime | None = None,
    countdown: float | None = None,
) -> None:
    """Queue `task_name` once the current transaction commits (at once when
    there is none). `eta` or `countdown` delay it; `queue` routes it."""
    options: dict[str, Any] = {}
    if queue:
        options["queue"] = queue
    if eta is not None:
        options["eta"] = eta
    if countdown is not None:
        options["countdown"] = countdown
    arguments, keywords = list(args), dict(kwargs or {})

    def send() -> None:
        from infrasim_site.celery import app

        app.send_task(task_name, args=arguments, kwargs=keywords, **options)

    transaction.on_commit(send)
