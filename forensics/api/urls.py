from django.urls import path
from rest_framework.routers import SimpleRouter

from forensics.api import views

router = SimpleRouter(trailing_slash=False)
router.register("acquisitions", views.AcquisitionViewSet, basename="acquisition")
router.register("keys", views.SigningKeyViewSet, basename="signing-key")
router.register("log/entries", views.LogEntryViewSet, basename="log-entry")

urlpatterns = [
    path("log/checkpoint", views.CheckpointView.as_view(), name="log-checkpoint"),
    path("log/key", views.LogKeyView.as_view(), name="log-key"),
    path("log/proof/inclusion", views.InclusionProofView.as_view(), name="log-inclusion-proof"),
    path("log/proof/consistency", views.ConsistencyProofView.as_view(), name="log-consistency-proof"),
    *router.urls,
]
