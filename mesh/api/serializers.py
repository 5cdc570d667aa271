from rest_framework import serializers

from infrasim_site.api import FastReadMixin
from mesh.models import MeshNetwork, NetworkRule, Peer, PeerShare


class NetworkSerializer(serializers.ModelSerializer):
    """What a peer's owner needs to know of a network."""

    gateway_synced = serializers.BooleanField(source="in_sync", read_only=True, help_text="The gateway holds every change so far.")

    class Meta:
        model = MeshNetwork
        fields = [
            "id", "name", "ipv4_cidr", "ipv6_prefix", "endpoint", "listen_port", "gateway_public_key",
            "default_keepalive", "peer_quota", "gateway_synced",
        ]
        read_only_fields = fields

class OperatorNetworkSerializer(NetworkSerializer):
    """Operators also see how the gateway is run and how its syncs go."""

    class Meta(NetworkSerializer.Meta):
        fields = NetworkSerializer.Meta.fields + [
            "interface", "gateway_netns", "gateway_queue", "address_cooldown_seconds", "generation",
            "applied_generation", "applied_at", "last_sync_error",
        ]
        read_only_fields = fields


class NetworkCreateRequest(serializers.Serializer):
    name = serializers.SlugField(max_length=40)
    ipv4_cidr = serializers.CharField(max_length=43)
    ipv6_prefix = serializers.CharField(max_length=43)
    endpoint = serializers.CharField(max_length=260, required=False)
    listen_port = serializers.IntegerField(min_value=1, max_value=65535, required=False)
    interface = serializers.RegexField(r"^[A-Za-z0-9_=+.-]{1,15}$", required=False)
    gateway_netns = serializers.CharField(max_length=64, required=False, allow_blank=True)
    gateway_queue = serializers.CharField(max_length=60, required=False)


class PeerSerializer(FastReadMixin, serializers.ModelSerializer):
    network = serializers.SerializerMethodField(help_text="The network's name.")
    has_preshared_key = serializers.SerializerMethodField()
    gateway_synced = serializers.SerializerMethodField(
        help_text="The gateway holds every change so far (e.g. a rotated key): switch the device now."
    )

    class Meta:
        model = Peer
        fields = [
            "id", "network", "name", "public_key", "key_epoch", "ipv4", "ipv6", "allowed_ips", "keepalive",
            "expires_at", "status", "created_at", "rotated_at", "revoked_at", "last_handshake_at", "rx_bytes",
            "tx_bytes", "has_preshared_key", "gateway_synced",
        ]
        read_only_fields = fields

    def get_has_preshared_key(self, peer) -> bool:
        return bool(peer.preshared_key_sealed)

    def _network(self, peer) -> MeshNetwork:
        # Loaded once per network and response, not joined into every peer
        # row (a list of 100 peers built 100 network objects), and fresh: the
        # change being answered bumped the generation after the peer was loaded.
        cache = self.context.setdefault("networks", {})
        if peer.network_id not in cache:
            cache[peer.network_id] = MeshNetwork.objects.only("name", "generation", "applied_generation").get(
                pk=peer.network_id
            )
        return cache[peer.network_id]

    def get_network(self, peer) -> str:
        return self._network(peer).name

    def get_gateway_synced(self, peer) -> bool:
        return self._network(peer).in_sync


class PeerCreateRequest(serializers.Serializer):
    name = serializers.CharField(max_length=256, allow_blank=True)
    public_key = serializers.CharField(required=False, allow_blank=True, max_length=256,
                                       help_text="Your `wg pubkey`; the private key never leaves your device.")
    generate_key = serializers.BooleanField(default=False,
                                            help_text="Let the server generate the pair; the private key is shown once.")
    preshared_key = serializers.BooleanField(default=False, help_text="Add a preshared key (post-quantum padding).")
    allowed_ips = serializers.ListField(child=serializers.CharField(max_length=64), required=False, max_length=64)
    keepalive = serializers.IntegerField(required=False, min_value=-(2**31), max_value=2**31)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    network = serializers.SlugField(required=False, max_length=40)


class PeerRotateRequest(serializers.Serializer):
    public_key = serializers.CharField(required=False, allow_blank=True, max_length=256)
    generate_key = serializers.BooleanField(default=False)


class PeerWithSecrets(PeerSerializer):
    config = serializers.CharField(read_only=True, allow_null=True,
                                   help_text="The wg-quick file with the generated private key: shown this once.")
    qr = serializers.CharField(read_only=True, allow_null=True, help_text="The same config as a PNG data URI.")

    class Meta(PeerSerializer.Meta):
        fields = PeerSerializer.Meta.fields + ["config", "qr"]


class PeerShareSerializer(serializers.ModelSerializer):
    handle = serializers.SerializerMethodField()

    class Meta:
        model = PeerShare
        fields = ["handle", "created_at"]
        read_only_fields = fields

    def get_handle(self, share) -> str | None:
        # A handle can be given up after the share was made.
        identity = getattr(share.grantee, "identity", None)
        return identity.handle if identity else None


class PeerShareRequest(serializers.Serializer):
    handle = serializers.CharField(max_length=64, help_text="The handle of the person whose peers may reach this one.")


class NetworkRuleSerializer(serializers.ModelSerializer):
    class Meta:
        model = NetworkRule
        fields = ["id", "source", "destination", "description", "created_at"]
        read_only_fields = fields


class NetworkRuleRequest(serializers.Serializer):
    source = serializers.CharField(max_length=64, required=False, allow_blank=True, help_text="a prefix; blank: any peer")
    destination = serializers.CharField(max_length=64, required=False, allow_blank=True,
                                        help_text="a prefix; blank: any peer")
    description = serializers.CharField(max_length=120, required=False, allow_blank=True)
