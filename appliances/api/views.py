"""/api/meshnet/templates and /api/meshnet/appliances; each view calls one service."""

from django.db.models import Prefetch
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from pathlib import Path

from rest_framework.parsers import JSONParser, MultiPartParser

from appliances import exports, selectors, services
from appliances.api import serializers as s
from appliances.models import Appliance, Archive, Operation
from identity.sessions import proof_of
from infrasim_site.api import Pagination
from infrasim_site.downloads import ranged_file_response
from infrasim_site.errors import InvalidInput


def _validated(serializer_class, request):
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


class TemplateViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """The catalog, with each template's image cache status on every host."""

    serializer_class = s.TemplateSerializer
    pagination_class = None

    def get_queryset(self):
        return selectors.templates()

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "cache": selectors.cache_by_template()}


def _accepted(operation: Operation) -> Response:
    return Response(s.OperationSerializer(operation).data, status=status.HTTP_202_ACCEPTED)


class ApplianceViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    pagination_class = Pagination
    throttle_scope = "appliance_write"
    throttle_methods = {"POST", "PUT", "PATCH", "DELETE"}

    def get_queryset(self):
        return (
            Appliance.objects.visible_to(self.request.user)
            .select_related("template", "host", "peer")
            .prefetch_related(Prefetch("operations", queryset=Operation.objects.filter(
                status__in=["pending", "running", "retrying"])))
        )

    def get_serializer_class(self):
        return s.ApplianceDetailSerializer if self.action == "retrieve" else s.ApplianceSerializer

    @extend_schema(request=s.ApplianceCreateRequest, responses={201: s.ApplianceDetailSerializer})
    def create(self, request):
        data = _validated(s.ApplianceCreateRequest, request)
        appliance = services.appliance_create(actor=request.user, **data)
        return Response(s.ApplianceDetailSerializer(self.get_queryset().get(pk=appliance.pk)).data,
                        status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={202: s.ApplianceSerializer})
    def destroy(self, request, pk=None):
        appliance = services.appliance_delete(actor=request.user, appliance_id=self.get_object().pk)
        return Response(s.ApplianceSerializer(self.get_queryset().get(pk=appliance.pk)).data,
                        status=status.HTTP_202_ACCEPTED)

    def _act(self, request, kind):
        return _accepted(services.appliance_act(actor=request.user, appliance_id=self.get_object().pk, kind=kind))

    @extend_schema(request=None, responses={202: s.OperationSerializer})
    @action(detail=True, methods=["post"])
    def start(self, request, pk=None):
        return self._act(request, Operation.Kind.START)

    @extend_schema(request=None, responses={202: s.OperationSerializer})
    @action(detail=True, methods=["post"])
    def shutdown(self, request, pk=None):
        """ACPI shutdown; forced off after APPLIANCE_SHUTDOWN_TIMEOUT_SECONDS."""
        return self._act(request, Operation.Kind.SHUTDOWN)

    @extend_schema(request=None, responses={202: s.OperationSerializer})
    @action(detail=True, methods=["post"])
    def reboot(self, request, pk=None):
        return self._act(request, Operation.Kind.REBOOT)

    @extend_schema(request=None, responses={202: s.OperationSerializer})
    @action(detail=True, methods=["post"])
    def poweroff(self, request, pk=None):
        """Force off at once (pulling the plug)."""
        return self._act(request, Operation.Kind.POWEROFF)

    @extend_schema(request=s.MigrateRequest, responses={202: s.OperationSerializer})
    @action(detail=True, methods=["post"])
    def migrate(self, request, pk=None):
        """Live migration with its storage to another host."""
        data = _validated(s.MigrateRequest, request)
        return _accepted(services.migrate_request(actor=request.user, appliance_id=self.get_object().pk,
                                                  host=data.get("host")))

    @extend_schema(responses={200: s.OperationSerializer(many=True)})
    @action(detail=True, methods=["get"])
    def operations(self, request, pk=None):
        """The appliance's job log, newest first."""
        return Response(s.OperationSerializer(selectors.operations(self.get_object()), many=True).data)

    @extend_schema(responses={200: OpenApiResponse(OpenApiTypes.STR, description="the serial console's last 64 KiB")})
    @action(detail=True, methods=["get"], url_path="console-log")
    def console_log(self, request, pk=None):
        text = services.console_log(actor=request.user, appliance_id=self.get_object().pk)
        response = HttpResponse(text, content_type="text/plain; charset=utf-8")
        response["Cache-Control"] = "no-store, private"
        return response

    @extend_schema(methods=["get"], responses={200: s.SnapshotListSerializer})
    @extend_schema(methods=["post"], request=s.SnapshotCreateRequest, responses={202: s.OperationSerializer})
    @action(detail=True, methods=["get", "post"])
    def snapshots(self, request, pk=None):
        appliance = self.get_object()
        if request.method == "GET":
            return Response({
                "supports": services.snapshot_support(appliance),
                "results": s.SnapshotSerializer(appliance.snapshots.all(), many=True).data,
            })
        data = _validated(s.SnapshotCreateRequest, request)
        return _accepted(services.snapshot_request(actor=request.user, appliance_id=appliance.pk,
                                                   name=data["name"], description=data.get("description") or ""))

    @extend_schema(request=None, responses={202: s.OperationSerializer})
    @action(detail=True, methods=["post"], url_path=r"snapshots/(?P<sid>[0-9]{1,18})/revert")
    def revert(self, request, pk=None, sid=None):
        return _accepted(services.snapshot_revert_request(actor=request.user, appliance_id=self.get_object().pk,
                                                          snapshot_id=int(sid)))

    @extend_schema(request=None, responses={202: s.OperationSerializer})
    @action(detail=True, methods=["delete"], url_path=r"snapshots/(?P<sid>[0-9]{1,18})")
    def delete_snapshot(self, request, pk=None, sid=None):
        return _accepted(services.snapshot_delete_request(actor=request.user, appliance_id=self.get_object().pk,
                                                          snapshot_id=int(sid)))


    @extend_schema(
        methods=["get"], parameters=[s.SECRETS_PARAMETER],
        responses={200: OpenApiResponse(OpenApiTypes.BINARY, description="appliance-{id}.tar.gz (Range supported)"),
                   202: s.OperationSerializer},
    )
    @extend_schema(methods=["post"], parameters=[s.SECRETS_PARAMETER], request=None,
                   responses={202: s.OperationSerializer})
    @action(detail=True, methods=["get", "post"])
    def archive(self, request, pk=None):
        """GET: the newest finished archive, or 202 with the export making
        one (started if there is none). POST: start a fresh export.
        `?secrets=include` asks for the keys too: the owner only, with a
        token or a passkey checked within the last 5 minutes."""
        appliance_id = self.get_object().pk
        include = _secrets_wanted(request)
        if request.method == "POST":
            return _accepted(exports.archive_export(actor=request.user, appliance_id=appliance_id,
                                                    include_secrets=include, proof=proof_of(request)))
        found = exports.archive_for_download(actor=request.user, appliance_id=appliance_id,
                                             include_secrets=include, proof=proof_of(request))
        if isinstance(found, Operation):
            response = _accepted(found)
            response["Retry-After"] = "2"
            return response
        return ranged_file_response(request, Path(found.path), content_type="application/gzip",
                                    filename=found.filename, etag=found.sha256, last_modified=found.created_at)

    @extend_schema(responses={200: s.ArchiveSerializer(many=True)})
    @action(detail=True, methods=["get"])
    def archives(self, request, pk=None):
        """The appliance's finished archives, newest first."""
        return Response(s.ArchiveSerializer(Archive.objects.filter(appliance=self.get_object()), many=True).data)

    @extend_schema(request={"multipart/form-data": s.ArchiveImportRequest, "application/json": s.ArchiveImportRequest},
                   responses={201: s.ApplianceDetailSerializer})
    @action(detail=False, methods=["post"], url_path="import", parser_classes=[MultiPartParser, JSONParser])
    def import_archive(self, request):
        """A new appliance from an archive: an upload (multipart field
        `archive`), or the `url` of one this server exported. Every member is
        checked against the manifest before anything is made."""
        data = _validated(s.ArchiveImportRequest, request)
        options = {key: data.get(key) for key in ("name", "ssh_authorized_keys", "user_data")}
        upload = data.get("archive")
        if upload is not None and data.get("url") not in (None, ""):
            raise InvalidInput("Give an archive or a URL, not both.", field="url", code="ambiguous")
        if upload is not None:
            appliance = exports.archive_import(actor=request.user, source=upload, **options)
        elif data.get("url") not in (None, ""):
            found = exports.archive_from_url(actor=request.user, url=data["url"])
            with open(found.path, "rb") as source:
                appliance = exports.archive_import(actor=request.user, source=source, **options)
        else:
            raise InvalidInput("Upload an archive (field 'archive') or give the URL of one.", field="archive",
                               code="required")
        return Response(s.ApplianceDetailSerializer(self.get_queryset().get(pk=appliance.pk)).data,
                        status=status.HTTP_201_CREATED)


def _secrets_wanted(request) -> bool:
    value = request.query_params.get("secrets", "")
    if value not in ("", "include", "exclude"):
        raise InvalidInput("secrets is 'include' or 'exclude'.", field="secrets", code="invalid_choice")
    return value == "include"


class PhoneHomeView(APIView):
    """cloud-init's phone_home: the guest's one-time URL (the token is the
    credential), posted when its first boot is done."""

    authentication_classes = []
    permission_classes = [permissions.AllowAny]
    throttle_scope = "phone_home"

    @extend_schema(request=None, responses={204: None}, auth=[])
    def post(self, request, pk: int, token: str):
        services.appliance_phone_home(appliance_id=pk, token=token)
        return Response(status=status.HTTP_204_NO_CONTENT)
