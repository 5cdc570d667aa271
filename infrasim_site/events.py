"""Pushing status changes to a user's open console pages.

Services call `publish_to_user` after their transaction commits; the events
consumer relays the message over /ws/events/ to every socket of that user.
"""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

log = logging.getLogger(__name__)


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


def publish_to_user(user_id: int, *, kind: str, data: dict) -> None:
    """Send after commit, so a page never sees a state the database does not hold."""

    def send() -> None:
        layer = get_channel_layer()
        try:
            async_to_sync(layer.group_send)(
                user_group(user_id), {"type": "status.event", "kind": kind, "data": data}
            )
        except Exception:  # the page catches up on reload; the change itself is committed
            log.exception("could not push %s event to user %s", kind, user_id)

    transaction.on_commit(send)
