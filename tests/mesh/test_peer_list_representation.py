"""The fast read path for peer lists gives exactly DRF's own output."""

from datetime import timedelta

from django.utils import timezone
from rest_framework import serializers

from mesh import services
from mesh.api.serializers import PeerSerializer
from tests.people import person


def test_the_fast_peer_representation_equals_drfs(db):
    owner = person("fast-reader")
    plain = services.peer_create(actor=owner, name="plain", generate_key=True).peer
    rich = services.peer_create(
        actor=owner, name="rich", generate_key=True, preshared_key=True, keepalive=0,
        expires_at=timezone.now() + timedelta(days=1),
    ).peer
    services.peer_rotate(actor=owner, peer_id=rich.pk, generate_key=True)
    services.peer_revoke(actor=owner, peer_id=plain.pk)
    peers = [type(p).objects.get(pk=p.pk) for p in (plain, rich)]

    fast = PeerSerializer(peers, many=True, context={}).data
    drf = [serializers.ModelSerializer.to_representation(PeerSerializer(context={}), peer) for peer in peers]
    assert [dict(row) for row in fast] == [dict(row) for row in drf]
    assert fast[0]["status"] == "revoked" and fast[0]["revoked_at"].endswith("Z")
    assert fast[1]["has_preshared_key"] is True and fast[1]["key_epoch"] == 2 and fast[1]["expires_at"]
