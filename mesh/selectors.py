from django.db.models import QuerySet

from identity.models import User
from mesh.filters import PeerFilterSet
from mesh.models import MeshNetwork, NetworkRule, Peer


def peers_for(user: User, params=None, *, own_only: bool = False) -> QuerySet[Peer]:
    """The peers `user` may see, filtered by `params` (PeerFilterSet's query
    parameters); `own_only` keeps an operator's console card to their own."""
    scope = Peer.objects.owned_by(user) if own_only else Peer.objects.visible_to(user)
    filterset = PeerFilterSet(params or {}, queryset=scope)
    return filterset.qs


def networks() -> QuerySet[MeshNetwork]:
    return MeshNetwork.objects.order_by("name")


def network_rules(network_id: int) -> QuerySet[NetworkRule]:
    return NetworkRule.objects.filter(network_id=network_id).order_by("pk")
