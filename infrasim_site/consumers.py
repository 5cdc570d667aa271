from channels.generic.websocket import AsyncJsonWebsocketConsumer

from infrasim_site.events import user_group


class EventsConsumer(AsyncJsonWebsocketConsumer):
    """/ws/events/: the signed-in user's status changes, as JSON messages."""

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            # Accept, then close with 4401, so the page learns why and stops
            # reconnecting (a refused handshake looks like a network error).
            await self.accept()
            await self.close(code=4401)
            return
        self.group = user_group(user.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json({"kind": "hello", "data": {"user": user.pk}})

    async def disconnect(self, code):
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content, **kwargs):
        if content.get("kind") == "ping":
            await self.send_json({"kind": "pong", "data": {}})

    async def status_event(self, event):
        await self.send_json({"kind": event["kind"], "data": event["data"]})
