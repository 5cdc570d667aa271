import logging

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from infrasim_site.events import user_group
from infrasim_site.parsers import loads_bounded

logger = logging.getLogger(__name__)

# Application close codes (4000-4999): the page reads them to decide whether
# reconnecting can help.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_BAD_FRAME = 4400


class EventsConsumer(AsyncJsonWebsocketConsumer):
    """/ws/events/: the signed-in user's status changes, as JSON messages."""

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            # Accept, then close with 4401, so the page learns why and stops
            # reconnecting (a refused handshake looks like a network error).
            await self.accept()
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.group = user_group(user.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json({"kind": "hello", "data": {"user": user.pk}})

    async def disconnect(self, code):
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        """Every frame from the page is a JSON object; anything else closes the
        socket with 4400 instead of raising inside the ASGI application."""
        try:
            content = loads_bounded(text_data) if text_data is not None else None
        except ValueError:
            content = None
        if not isinstance(content, dict):
            logger.warning("events socket: closing after a frame that is not a JSON object")
            await self.close(code=CLOSE_BAD_FRAME, reason="bad frame")
            return
        await self.receive_json(content, **kwargs)

    async def receive_json(self, content, **kwargs):
        if content.get("kind") == "ping":
            await self.send_json({"kind": "pong", "data": {}})

    async def status_event(self, event):
        await self.send_json({"kind": event["kind"], "data": event["data"]})
