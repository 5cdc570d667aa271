"""/api/forensics/: acquisitions, their evidence and bundles, signing keys, and
the transparency log. Each view parses, authorizes and calls one service."""

from __future__ import annotations

import base64
from pathlib import Path

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from forensics import attestation, keys, ledger, services
from forensics.api import serializers as s
from forensics.signatures import log_vkey
from identity.permissions import PasskeySession
from infrasim_site.api import Pagination
from infrasim_site.downloads import ranged_file_response
from infrasim_site.errors import NotFound


def _validated(serializer_class, request) -> dict:
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class AcquisitionViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Memory captures you requested (operators: all of them)."""

    serializer_class = s.AcquisitionSerializer
    pagination_class = Pagination
    throttle_scope = "acquisition"
    throttle_methods = {"POST"}

    def get_queryset(self):
        return services.visible_acquisitions(self.request.user)

    @extend_schema(request=s.AcquisitionRequest, responses={202: s.AcquisitionSerializer})
    def create(self, request):
        """Capture a running appliance's memory: 202 with the acquisition,
        which moves through dumping and signing to complete."""
        data = _validated(s.AcquisitionRequest, request)
        acquisition = services.acquisition_request(actor=request.user, appliance_id=data["appliance"],
                                                   case_ref=data["case_ref"], reason=data["reason"],
                                                   format=data.get("format"))
        return Response(s.AcquisitionSerializer(acquisition).data, status=status.HTTP_202_ACCEPTED)

    def retrieve(self, request, pk=None):
        return Response(s.AcquisitionSerializer(services.acquisition_get(actor=request.user, acquisition_id=pk)).data)

    @extend_schema(responses={(200, "application/octet-stream"): OpenApiTypes.BINARY, 206: OpenApiTypes.BINARY})
    @action(detail=True, methods=["get"])
    def evidence(self, request, pk=None):
        """The dump itself, with HTTP Range; its ETag is its SHA-256."""
        acquisition = services.completed(actor=request.user, acquisition_id=pk)
        return ranged_file_response(request, Path(acquisition.evidence_path), content_type="application/octet-stream",
                                    filename=acquisition.evidence_name, etag=acquisition.sha256,
                                    last_modified=acquisition.completed_at)

    @extend_schema(responses={(200, "application/json"): OpenApiTypes.OBJECT})
    @action(detail=True, methods=["get"])
    def bundle(self, request, pk=None):
        """Everything `forensics_verify` needs, in one JSON document: the
        signed statement, the key, the passkey co-signature if any, and the
        log entry with an inclusion proof against a signed checkpoint."""
        acquisition = services.completed(actor=request.user, acquisition_id=pk)
        response = Response(attestation.bundle(acquisition))
        response["Content-Disposition"] = f'attachment; filename="acquisition-{acquisition.pk}.bundle.json"'
        return response

    @extend_schema(request=s.CosignRequest, responses={200: OpenApiTypes.OBJECT})
    @action(detail=True, methods=["get", "post"], permission_classes=[permissions.IsAuthenticated, PasskeySession])
    def cosign(self, request, pk=None):
        """GET: WebAuthn request options whose challenge is SHA-256 of the
        envelope's PAE. POST: the assertion, verified and added to the bundle."""
        if request.method == "GET":
            return Response(services.cosign_options(actor=request.user, acquisition_id=pk))
        data = _validated(s.CosignRequest, request)
        acquisition = services.acquisition_cosign(actor=request.user, acquisition_id=pk, credential=data["credential"])
        return Response(s.AcquisitionSerializer(acquisition).data)


class SigningKeyViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Every attestation key, current and retired: public, so anyone can check
    a bundle's key against this list."""

    serializer_class = s.SigningKeySerializer
    permission_classes = [permissions.AllowAny]
    pagination_class = None

    def get_queryset(self):
        return keys.published_keys()

    @extend_schema(request=s.KeyRotateRequest, responses={201: s.SigningKeySerializer})
    @action(detail=False, methods=["post"], permission_classes=[permissions.IsAuthenticated, PasskeySession])
    def rotate(self, request):
        """Retire your current key and make a new one (operators: anyone's, by `user`)."""
        data = _validated(s.KeyRotateRequest, request)
        key = services.signing_key_rotate(actor=request.user, user_id=data.get("user") or None)
        return Response(s.SigningKeySerializer(key).data, status=status.HTTP_201_CREATED)


class _PublicLogView(APIView):
    """Hashes and sizes only: anyone may read them."""

    permission_classes = [permissions.AllowAny]


class CheckpointView(_PublicLogView):
    @extend_schema(responses={(200, "text/plain"): OpenApiTypes.STR})
    def get(self, request):
        """The log's current signed checkpoint (C2SP tlog-checkpoint, signed-note)."""
        return HttpResponse(ledger.checkpoint(), content_type="text/plain; charset=utf-8")


class LogKeyView(_PublicLogView):
    @extend_schema(responses={(200, "text/plain"): OpenApiTypes.STR})
    def get(self, request):
        """The checkpoint verifier key: <origin>+<hex key id>+<base64(0x01 || Ed25519 key)>."""
        return HttpResponse(log_vkey() + "\n", content_type="text/plain; charset=utf-8")


class InclusionProofView(_PublicLogView):
    @extend_schema(parameters=[OpenApiParameter("index", int, required=True),
                               OpenApiParameter("tree_size", int, required=True)],
                   responses={200: s.InclusionProofSerializer})
    def get(self, request):
        proof = services.log_inclusion_proof(index=request.query_params.get("index"),
                                             tree_size=request.query_params.get("tree_size"))
        return Response({**proof, "leaf_hash": _b64(bytes.fromhex(proof["leaf_hash"])),
                         "hashes": [_b64(node) for node in proof["hashes"]]})


class ConsistencyProofView(_PublicLogView):
    @extend_schema(parameters=[OpenApiParameter("first", int, required=True),
                               OpenApiParameter("second", int, required=True)],
                   responses={200: s.ConsistencyProofSerializer})
    def get(self, request):
        proof = services.log_consistency_proof(first=request.query_params.get("first"),
                                               second=request.query_params.get("second"))
        return Response({**proof, "hashes": [_b64(node) for node in proof["hashes"]]})


class LogEntryViewSet(viewsets.ReadOnlyModelViewSet):
    """The log's entries: operators read all, everyone else the ones that
    concern them. The hashes are public; the contents are not."""

    serializer_class = s.LogEntrySerializer
    pagination_class = Pagination
    lookup_field = "index"

    def get_queryset(self):
        return ledger.entries_visible_to(self.request.user).order_by("index")

    def _row(self, entry) -> dict:
        return {"index": entry.index, "kind": entry.kind, "actor": entry.actor, "subject": entry.subject,
                "payload": entry.payload, "recorded_at": entry.recorded_at, "leaf": _b64(bytes(entry.leaf)),
                "leaf_hash": entry.leaf_hash}

    def list(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(s.LogEntrySerializer([self._row(e) for e in page], many=True).data)

    def retrieve(self, request, index=None):
        entry = self.get_queryset().filter(index=index).first() if str(index).isdigit() else None
        if entry is None:
            raise NotFound("No such entry.")
        return Response(s.LogEntrySerializer(self._row(entry)).data)
