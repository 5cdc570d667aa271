from django.db.models import QuerySet

from identity.models import User
from mesh.models import MeshNetwork, Peer


def peers_for(user: User, *, include_ended: bool = False) -> QuerySet[Peer]:
    scope = Peer.objects.all() if user.is_staff else Peer.objects.filter(owner=user)
    if not include_ended:
        scope = scope.filter(status=Peer.Status.ACTIVE)
    return scope.select_related("network").order_by("created_at")


def networks() -> QuerySet[MeshNetwork]:
    return MeshNetwork.objects.order_by("name")
