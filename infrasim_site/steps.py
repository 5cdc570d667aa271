"""The one step state machine behind every long operation (provisioning a
handle, and later building an appliance, exporting an archive, dumping
memory).

A long operation is a set of short, idempotent steps. Each step is a row; a
Celery task, named by `task_name` and given the row's id, runs it. The task
claims the row with a conditional update, so two deliveries never run it at
once; a transient error puts it back to RETRYING with exponential backoff
until `max_attempts` is spent; this class is the only place that schedules
retries (and `retry_later` applies the same policy to work that is not a
step row). Under acks_late a worker that died leaves its row RUNNING and the
broker redelivers the task; `claim` reports that as a redelivery, and since
every step is idempotent it is simply run again.
"""

from __future__ import annotations

from datetime import timedelta
from enum import Enum

from django.db import models
from django.db.models import F
from django.utils import timezone

from infrasim_site.queueing import enqueue_on_commit


class StepStatus(models.TextChoices):
    PENDING = "pending", "pending"
    RUNNING = "running", "running"
    RETRYING = "retrying", "retrying"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"


class Claim(Enum):
    CLAIMED = "claimed"  # this delivery owns the step now
    REDELIVERED = "redelivered"  # RUNNING already: its worker died, run it again
    NOT_OURS = "not_ours"  # finished, cancelled or gone: nothing to do


def backoff_delay(attempt: int, *, base: float, max_attempts: int, cap: float | None = None) -> float | None:
    """Seconds before attempt `attempt + 1` (base x 2^(attempt-1), at most
    `cap`), or None once `max_attempts` are spent. The one retry policy."""
    if attempt >= max_attempts:
        return None
    delay = base * 2 ** (attempt - 1)
    return min(delay, cap) if cap is not None else delay


def retry_later(
    task_name: str, args: tuple, kwargs: dict | None = None, *, attempt: int, base: float, max_attempts: int,
    cap: float | None = None, minimum: float = 0, queue: str | None = None,
) -> float | None:
    """For work that is not a step row (undoing a handle, syncing a gateway):
    queue `task_name` again with attempt + 1 after the backoff. Returns the
    delay, or None once the attempts are spent."""
    delay = backoff_delay(attempt, base=base, max_attempts=max_attempts, cap=cap)
    if delay is not None:
        delay = max(delay, minimum)
        enqueue_on_commit(task_name, args, {**(kwargs or {}), "attempt": attempt + 1}, queue=queue, countdown=delay)
    return delay


CLAIMABLE = (StepStatus.PENDING, StepStatus.RETRYING)
UNFINISHED = (StepStatus.PENDING, StepStatus.RUNNING, StepStatus.RETRYING)


class Step(models.Model):
    status = models.CharField(max_length=20, choices=StepStatus.choices, default=StepStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    #: The Celery task (by name) that runs one step; it takes the step's id.
    task_name: str = ""

    class Meta:
        abstract = True

    # --- policy: subclasses read these from their settings -------------------------

    def max_attempts(self) -> int:
        return 5

    def backoff_seconds(self) -> float:
        return 2

    def queue(self) -> str | None:
        """The queue to run on; None routes by task name (the app's queue)."""
        return None

    # --- the machine ------------------------------------------------------------------

    @classmethod
    def claim(cls, pk: int, *, unless: models.Q | None = None) -> Claim:
        """Take the step for this delivery. `unless` names rows that must not
        start (e.g. an operation being cancelled)."""
        now = timezone.now()
        claimable = cls.objects.filter(pk=pk, status__in=CLAIMABLE)
        if unless is not None:
            claimable = claimable.exclude(unless)
        if claimable.update(status=StepStatus.RUNNING, attempts=F("attempts") + 1, started_at=now, next_attempt_at=None):
            return Claim.CLAIMED
        running = cls.objects.filter(pk=pk, status=StepStatus.RUNNING)
        if unless is not None:
            running = running.exclude(unless)
        return Claim.REDELIVERED if running.exists() else Claim.NOT_OURS

    def retry_delay(self) -> float | None:
        """Seconds until the next attempt after a transient error, or None
        when the attempts are spent: backoff x 2^(attempt-1)."""
        return backoff_delay(self.attempts, base=self.backoff_seconds(), max_attempts=self.max_attempts())

    def settle(self, *, status: str, error: str = "", retry_in: float | None = None, **fields) -> None:
        """Record an attempt's outcome (inside the caller's transaction) and,
        for RETRYING, queue the next attempt after commit."""
        now = timezone.now()
        self.status, self.last_error = status, error[:2000]
        self.next_attempt_at = now + timedelta(seconds=retry_in) if retry_in is not None else None
        self.finished_at = None if retry_in is not None else now
        for name, value in fields.items():
            setattr(self, name, value)
        self.save(update_fields=["status", "last_error", "next_attempt_at", "finished_at", *fields])
        if retry_in is not None:
            enqueue_on_commit(self.task_name, (self.pk,), queue=self.queue(), countdown=retry_in)

    def fail_or_retry(self, error: str, **fields) -> float | None:
        """A transient error: RETRYING with backoff, or FAILED once attempts are spent."""
        retry_in = self.retry_delay()
        if retry_in is None:
            self.settle(status=StepStatus.FAILED, error=f"{error} (gave up after {self.attempts} attempts)", **fields)
        else:
            self.settle(status=StepStatus.RETRYING, error=error, retry_in=retry_in, **fields)
        return retry_in
