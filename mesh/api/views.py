"""The seed's /api/meshnet/mesh/ endpoints; each view calls one service."""

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.response import Response
from rest_framework.views import APIView

from forensics import ledger
from infrasim_site.api import Pagination
from infrasim_site.errors import NotFound
from mesh import qr, selectors, services
from mesh.api import serializers as s
from mesh.models import MeshNetwork


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


def _with_secrets(created: services.CreatedPeer) -> dict:
    data = s.PeerSerializer(created.peer, context={}).data
    config = services.render_peer_config(created.peer, private_key=created.private_key) if created.private_key else None
    return {**data, "config": config, "qr": qr.data_uri(config) if config else None}


class PeerViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = s.PeerSerializer
    pagination_class = Pagination

    def get_queryset(self):
        include_ended = self.request.query_params.get("include_ended") in {"1", "true"}
        return selectors.peers_for(self.request.user, include_ended=include_ended or self.action != "list")

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
        return Response(_with_secrets(created), status=status.HTTP_201_CREATED)

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
        return Response(_with_secrets(created))

    @extend_schema(
        parameters=[OpenApiParameter("format", str, enum=["conf", "qr"], description="conf (default) or qr (PNG)")],
        responses={200: OpenApiResponse(OpenApiTypes.STR, description="wg-quick config, or a PNG QR code")},
    )
    @action(detail=True, methods=["get"], url_path="config", content_negotiation_class=ConfigFormatNegotiation)
    def config(self, request, pk=None):
        peer = self.get_object()
        text = services.peer_config(actor=request.user, peer_id=peer.pk)
        if request.query_params.get("format") == "qr":
            return HttpResponse(qr.png(text), content_type="image/png")
        response = HttpResponse(text, content_type="text/plain; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="infrasim-{peer.network.name}-{peer.pk}.conf"'
        return response


class NetworkViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = s.NetworkSerializer
    pagination_class = Pagination

    def get_queryset(self):
        return selectors.networks()

    @extend_schema(request=s.NetworkCreateRequest, responses={201: s.NetworkSerializer})
    def create(self, request):
        data = _validated(s.NetworkCreateRequest, request)
        network = services.network_create(actor=request.user, **data)
        return Response(s.NetworkSerializer(network).data, status=status.HTTP_201_CREATED)


class GatewayConfigView(APIView):
    """Operators only: the gateway interface's full config (with its private
    key), for setting up a gateway host by hand. Every read is recorded."""

    permission_classes = [permissions.IsAdminUser]

    @extend_schema(
        parameters=[OpenApiParameter("network", str, description="network name (default network if omitted)")],
        responses={200: OpenApiResponse(OpenApiTypes.STR, description="wg(8) config for `wg syncconf`")},
    )
    def get(self, request):
        name = request.query_params.get("network")
        network = MeshNetwork.objects.filter(name=name).first() if name else services.default_network()
        if network is None:
            raise NotFound("No such network.", field="network")
        ledger.record(
            kind="mesh.gateway.config_read", actor=ledger.actor_label(request.user),
            subject=f"mesh_network:{network.pk}", payload={},
        )
        return HttpResponse(services.render_gateway_config(network), content_type="text/plain; charset=utf-8")
