"""Thin Celery tasks for the mesh. sync_gateway and collect_stats run on the
gateway host's queue, where `wg` reaches the interface."""

from celery import shared_task

from mesh import services
from mesh.gateway import GatewayError
from mesh.models import MeshNetwork


@shared_task(name="mesh.tasks.sync_gateway", acks_late=True)
def sync_gateway(network_id: int, force: bool = False, attempt: int = 1) -> int | None:
    network = services.gateway_sync_or_retry(network_id=network_id, force=force, attempt=attempt)
    return network.applied_generation if network else None


@shared_task(name="mesh.tasks.expire_peer", acks_late=True)
def expire_peer(peer_id: int) -> int:
    expired = services.peers_expire_due(peer_id=peer_id)
    if not expired:
        # Delivered early (clock skew between hosts, rounding): try again at the expiry.
        peer = services.peer_expiring_later(peer_id=peer_id)
        if peer is not None:
            expire_peer.apply_async((peer_id,), eta=peer.expires_at, queue=peer.network.gateway_queue)
    return expired


@shared_task(name="mesh.tasks.expire_due_peers")
def expire_due_peers() -> int:
    return services.peers_expire_due()


@shared_task(name="mesh.tasks.resync_gateways")
def resync_gateways() -> int:
    """Periodic drift repair: re-apply every network on its gateway's queue."""
    networks = list(MeshNetwork.objects.values_list("pk", "gateway_queue"))
    for pk, queue in networks:
        sync_gateway.apply_async((pk,), {"force": True}, queue=queue)
    return len(networks)


@shared_task(name="mesh.tasks.collect_stats")
def collect_stats() -> None:
    for pk, queue in MeshNetwork.objects.values_list("pk", "gateway_queue"):
        collect_network_stats.apply_async((pk,), queue=queue)


@shared_task(name="mesh.tasks.collect_network_stats")
def collect_network_stats(network_id: int) -> int:
    try:
        return services.gateway_collect_stats(network_id=network_id)
    except GatewayError:
        return 0  # the sync task records gateway trouble; stats simply wait
