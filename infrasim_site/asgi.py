import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "infrasim_site.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs the app registry)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import WebsocketDenier  # noqa: E402

from infrasim_site.origins import is_trusted_origin  # noqa: E402
from infrasim_site.routing import websocket_urlpatterns  # noqa: E402


class TrustedOriginValidator:
    """Refuses a WebSocket handshake unless its Origin is trusted by the same
    rule as Django's CSRF check: scheme, host and port (channels' own
    AllowedHostsOriginValidator ignores the port)."""

    def __init__(self, app):
        self.app = app
        self.denier = WebsocketDenier.as_asgi()

    async def __call__(self, scope, receive, send):
        origin = dict(scope.get("headers", [])).get(b"origin", b"").decode("latin-1")
        if not is_trusted_origin(origin):
            return await self.denier(scope, receive, send)
        return await self.app(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": TrustedOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
