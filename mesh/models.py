from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from infrasim_site.visibility import OwnedQuerySet


class MeshNetwork(models.Model):
    """A WireGuard mesh: one gateway interface that every peer dials, with an
    IPv4 pool and an IPv6 ULA pool. The gateway's private key is sealed."""

    name = models.SlugField(max_length=40, unique=True)
    ipv4_cidr = models.CharField(max_length=43, help_text="e.g. 100.96.0.0/16")
    ipv6_prefix = models.CharField(max_length=43, help_text="a ULA prefix, e.g. fd7a:115c:a1e0::/64")
    endpoint = models.CharField(max_length=260, help_text="host:port that peers dial (WG_GATEWAY_ENDPOINT)")
    listen_port = models.PositiveIntegerField(default=51820)
    interface = models.CharField(max_length=15, help_text="the gateway's WireGuard interface name")
    gateway_netns = models.CharField(
        max_length=64, blank=True,
        help_text="network namespace that holds the interface on the gateway host (blank: the host's own)",
    )
    gateway_queue = models.CharField(max_length=60, default="mesh", help_text="Celery queue of the gateway host")
    gateway_public_key = models.CharField(max_length=44)
    gateway_private_key_sealed = models.TextField()
    default_keepalive = models.PositiveIntegerField(default=25)
    peer_quota = models.PositiveIntegerField(default=20, help_text="active peers per user")
    address_cooldown_seconds = models.PositiveIntegerField(default=3600)
    # Bumped by every change that alters the gateway's config; the sync
    # records the generation it applied, so drift is visible and repairable.
    generation = models.PositiveBigIntegerField(default=0)
    applied_generation = models.PositiveBigIntegerField(default=0)
    applied_at = models.DateTimeField(null=True, blank=True)
    last_sync_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name

    @property
    def in_sync(self) -> bool:
        """The gateway holds every change made so far (e.g. a rotated key)."""
        return self.applied_generation >= self.generation


class PeerQuerySet(OwnedQuerySet):
    pass


class Peer(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "active"
        REVOKED = "revoked", "revoked"
        EXPIRED = "expired", "expired"

    network = models.ForeignKey(MeshNetwork, on_delete=models.PROTECT, related_name="peers")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="mesh_peers")
    name = models.CharField(max_length=64)
    public_key = models.CharField(max_length=44)
    key_epoch = models.PositiveIntegerField(default=1)
    key_generated_by_server = models.BooleanField(default=False)
    preshared_key_sealed = models.TextField(blank=True)
    ipv4 = models.GenericIPAddressField(protocol="IPv4")
    ipv6 = models.GenericIPAddressField(protocol="IPv6")
    allowed_ips = models.JSONField(default=list, help_text="What the peer routes into the mesh; inside the network.")
    keepalive = models.PositiveIntegerField(default=25)
    expires_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    created_at = models.DateTimeField(auto_now_add=True)
    rotated_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_handshake_at = models.DateTimeField(null=True, blank=True)
    rx_bytes = models.PositiveBigIntegerField(default=0)
    tx_bytes = models.PositiveBigIntegerField(default=0)

    objects = PeerQuerySet.as_manager()

    class Meta:
        ordering = ["created_at"]
        constraints = [
            # One live peer per public key: the gateway could not tell two apart.
            models.UniqueConstraint(
                fields=["network", "public_key"], condition=Q(status="active"), name="peer_unique_active_key"
            ),
            models.UniqueConstraint(
                fields=["owner", "name"], condition=Q(status="active"), name="peer_unique_active_name"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.ipv4})"


class AddressLease(models.Model):
    """Who holds an address of a network. The unique constraint is what makes
    double allocation impossible, also under concurrent creation. A released
    address keeps its row (peer cleared, released_at set) for the cool-down."""

    network = models.ForeignKey(MeshNetwork, on_delete=models.CASCADE, related_name="leases")
    address = models.GenericIPAddressField()
    peer = models.ForeignKey(Peer, null=True, blank=True, on_delete=models.SET_NULL, related_name="leases")
    reserved = models.BooleanField(default=False, help_text="Held by an operator; never handed out.")
    note = models.CharField(max_length=120, blank=True)
    released_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["network", "address"], name="lease_unique_address")]

    def __str__(self) -> str:
        return f"{self.address} in {self.network}"


class PeerShareQuerySet(OwnedQuerySet):
    owner_field = "peer__owner"


class PeerShare(models.Model):
    """The owner lets another user's peers reach this peer (replies flow
    back; the shared peer cannot open connections to them)."""

    peer = models.ForeignKey(Peer, on_delete=models.CASCADE, related_name="shares")
    grantee = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="mesh_shares_received")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = PeerShareQuerySet.as_manager()

    class Meta:
        ordering = ["created_at"]
        constraints = [models.UniqueConstraint(fields=["peer", "grantee"], name="peer_share_unique_grantee")]

    def __str__(self) -> str:
        return f"{self.peer} -> user {self.grantee_id}"


class NetworkRule(models.Model):
    """An operator's allowance on a network: traffic from `source` to
    `destination` (prefixes inside the network; blank is the whole network,
    both blank lets every peer reach every other)."""

    network = models.ForeignKey(MeshNetwork, on_delete=models.CASCADE, related_name="rules")
    source = models.CharField(max_length=43, blank=True, help_text="a prefix such as 100.96.0.2/32; blank: any peer")
    destination = models.CharField(max_length=43, blank=True, help_text="a prefix; blank: any peer")
    description = models.CharField(max_length=120, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return f"{self.source or 'any'} -> {self.destination or 'any'} in {self.network}"
