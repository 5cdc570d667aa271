from django.urls import path

from appliances.consumers import SerialConsoleConsumer
from infrasim_site.consumers import EventsConsumer

websocket_urlpatterns = [
    path("ws/events/", EventsConsumer.as_asgi()),
    path("ws/appliances/<int:appliance_id>/console", SerialConsoleConsumer.as_asgi()),
]
