from django.urls import path
from rest_framework.routers import SimpleRouter

from mesh.api import views

router = SimpleRouter(trailing_slash=False)
router.register("peers", views.PeerViewSet, basename="mesh-peer")
router.register("networks", views.NetworkViewSet, basename="mesh-network")

urlpatterns = [path("gateway/config", views.GatewayConfigView.as_view(), name="mesh-gateway-config"), *router.urls]
