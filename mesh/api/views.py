"""The seed's /api/meshnet/mesh/ endpoints; each view calls one service."""

from django.http import HttpResponse
from django.utils.cache import patch_cache_control
from django.utils.text import slugify
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from identity.permissions import PasskeySession
from infrasim_site.api import Pagination
from infrasim_site.errors import NotFound
from mesh import qr, selectors, services
from mesh.api import serializers as s
from mesh.filters import PeerFilterSet
from mesh.models import MeshNetwork, Peer


OPERATORS = [*api_settings.DEFAULT_PERMISSION_CLASSES, permissions.IsAdminUser]


class ConfigFormatNegotiation(DefaultContentNegotiation):
    """The seed's `?format=qr` names the config's format, not one of DRF's
    renderers (DRF reads `format` as a renderer override and would 404)."""

    def select_renderer(self, request, renderers, format_suffix=None):
        if request.query_params.get("format") in {"qr", "conf"}:
            return renderers[0], renderers[0].media_type
        return super().select_renderer(request, renderers, format_suffix)


def _validated(serializer_class, request):
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _secret(response):
    """A response that carries a key or a config: no cache may keep it."""
    patch_cache_control(response, no_store=True, private=True)
    return response


def _with_secrets(created: services.CreatedPeer) -> dict:
    data = s.PeerSerializer(created.peer, context={}).data
    config = services.render_peer_config(created.peer, private_key=created.private_key) if created.private_key else None
    return {**data, "config": config, "qr": qr.data_uri(config) if config else None}


class PeerViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = s.PeerSerializer
    pagination_class = Pagination
    filter_backends = [DjangoFilterBackend]
    filterset_class = PeerFilterSet
    # Creating, rotating, revoking and sharing peers each reach the gateway.
    throttle_scope = "mesh_write"
    throttle_methods = {"POST", "PUT", "PATCH", "DELETE"}

    def get_queryset(self):
        return Peer.objects.visible_to(self.request.user)

    def filter_queryset(self, queryset):
        # The filter shapes the list; a peer's own URL finds it whatever its status.
        return super().filter_queryset(queryset) if self.action == "list" else queryset

    @extend_schema(request=s.PeerCreateRequest, responses={201: s.PeerWithSecrets})
    def create(self, request):
        data = _validated(s.PeerCreateRequest, request)
        network = None
        if data.get("network"):
            network = MeshNetwork.objects.filter(name=data["network"]).first()
            if network is None:
                raise NotFound("No such network.", field="network")
        created = services.peer_create(
            actor=request.user,
            name=data["name"],
            public_key=data.get("public_key") or None,
            generate_key=data["generate_key"],
            preshared_key=data["preshared_key"],
            allowed_ips=data.get("allowed_ips"),
            keepalive=data.get("keepalive"),
            expires_at=data.get("expires_at"),
            network=network,
        )
        return _secret(Response(_with_secrets(created), status=status.HTTP_201_CREATED))

    @extend_schema(responses={204: None})
    def destroy(self, request, pk=None):
        services.peer_revoke(actor=request.user, peer_id=self.get_object().pk)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses={200: s.PeerSerializer})
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        peer = services.peer_revoke(actor=request.user, peer_id=self.get_object().pk)
        return Response(s.PeerSerializer(peer).data)

    @extend_schema(request=s.PeerRotateRequest, responses={200: s.PeerWithSecrets})
    @action(detail=True, methods=["post"])
    def rotate(self, request, pk=None):
        data = _validated(s.PeerRotateRequest, request)
        created = services.peer_rotate(
            actor=request.user,
            peer_id=self.get_object().pk,
            public_key=data.get("public_key") or None,
            generate_key=data["generate_key"],
        )
        return _secret(Response(_with_secrets(created)))

    @extend_schema(
        parameters=[OpenApiParameter("format", str, enum=["conf", "qr"], description="conf (default) or qr (PNG)")],
        responses={200: OpenApiResponse(OpenApiTypes.STR, description="wg-quick config, or a PNG QR code")},
    )
    @action(detail=True, methods=["get"], url_path="config", content_negotiation_class=ConfigFormatNegotiation)
    def config(self, request, pk=None):
        peer = self.get_object()
        text = services.peer_config(actor=request.user, peer_id=peer.pk)
        if request.query_params.get("format") == "qr":
            return _secret(HttpResponse(qr.png(text), content_type="image/png"))
        response = HttpResponse(text, content_type="text/plain; charset=utf-8")
        # slugify keeps ASCII letters, digits and '-': nothing that could break the header.
        response["Content-Disposition"] = f'attachment; filename="infrasim-{slugify(peer.name) or peer.pk}.conf"'
        return _secret(response)

    @extend_schema(methods=["get"], responses={200: s.PeerShareSerializer(many=True)})
    @extend_schema(methods=["post"], request=s.PeerShareRequest, responses={201: s.PeerShareSerializer})
    @action(detail=True, methods=["get", "post"])
    def shares(self, request, pk=None):
        """Who else's peers may reach this peer; POST shares it with a handle."""
        peer_id = self.get_object().pk
        if request.method == "GET":
            shares = services.peer_shares(actor=request.user, peer_id=peer_id)
            return Response(s.PeerShareSerializer(shares, many=True).data)
        data = _validated(s.PeerShareRequest, request)
        share = services.peer_share_create(actor=request.user, peer_id=peer_id, handle=data["handle"])
        return Response(s.PeerShareSerializer(share).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={204: None})
    @action(detail=True, methods=["delete"], url_path=r"shares/(?P<handle>[^/]+)")
    def unshare(self, request, pk=None, handle=None):
        services.peer_share_delete(actor=request.user, peer_id=self.get_object().pk, handle=handle)
        return Response(status=status.HTTP_204_NO_CONTENT)


class NetworkViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    pagination_class = Pagination

    def get_queryset(self):
        return selectors.networks()

    def get_serializer_class(self):
        return s.OperatorNetworkSerializer if self.request.user.is_staff else s.NetworkSerializer

    @extend_schema(request=s.NetworkCreateRequest, responses={201: s.OperatorNetworkSerializer})
    def create(self, request):
        data = _validated(s.NetworkCreateRequest, request)
        network = services.network_create(actor=request.user, **data)
        return Response(s.OperatorNetworkSerializer(network).data, status=status.HTTP_201_CREATED)

    @extend_schema(methods=["get"], responses={200: s.NetworkRuleSerializer(many=True)})
    @extend_schema(methods=["post"], request=s.NetworkRuleRequest, responses={201: s.NetworkRuleSerializer})
    @action(detail=True, methods=["get", "post"], permission_classes=OPERATORS)
    def rules(self, request, pk=None):
        """Operators: what peers of this network may reach beyond their owner's and shared peers."""
        network = self.get_object()
        if request.method == "GET":
            return Response(s.NetworkRuleSerializer(selectors.network_rules(network.pk), many=True).data)
        data = _validated(s.NetworkRuleRequest, request)
        rule = services.network_rule_create(actor=request.user, network_id=network.pk, **data)
        return Response(s.NetworkRuleSerializer(rule).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={204: None})
    @action(detail=True, methods=["delete"], url_path=r"rules/(?P<rule_id>[0-9]{1,18})",
            permission_classes=OPERATORS)
    def delete_rule(self, request, pk=None, rule_id=None):
        network = self.get_object()
        if not selectors.network_rules(network.pk).filter(pk=rule_id).exists():
            raise NotFound("No such rule.", field="rule")
        services.network_rule_delete(actor=request.user, rule_id=int(rule_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class GatewayConfigView(APIView):
    """Operators only: the gateway interface's full config (with its private
    key), for setting up a gateway host by hand. Every read is recorded."""

    # The gateway's private key leaves the server here: like any secret
    # export, only from a passkey session checked within the last 10 minutes.
    permission_classes = [*OPERATORS, PasskeySession]
    recent_passkey_actions = {"get"}

    @extend_schema(
        parameters=[OpenApiParameter("network", str, description="network name (default network if omitted)")],
        responses={200: OpenApiResponse(OpenApiTypes.STR, description="wg(8) config for `wg syncconf`")},
    )
    def get(self, request):
        name = request.query_params.get("network")
        network = MeshNetwork.objects.filter(name=name).first() if name else services.default_network()
        if network is None:
            raise NotFound("No such network.", field="network")
        text = services.gateway_config_read(actor=request.user, network_id=network.pk)
        return _secret(HttpResponse(text, content_type="text/plain; charset=utf-8"))
