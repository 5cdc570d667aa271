from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers

from appliances.models import Appliance, Archive, Operation, Snapshot, Template


class CacheStatusSerializer(serializers.Serializer):
    host = serializers.CharField()
    status = serializers.CharField(help_text="absent, pending, running (downloading or building), retrying, succeeded, failed")
    detail = serializers.CharField()
    digest = serializers.CharField()
    size = serializers.IntegerField()
    error = serializers.CharField()


class TemplateSerializer(serializers.ModelSerializer):
    cache = serializers.SerializerMethodField(help_text="The template's image in each host's cache.")
    source = serializers.SerializerMethodField(help_text="'download' or 'built here'.")

    class Meta:
        model = Template
        fields = ["slug", "name", "os", "source", "source_url", "checksum_algorithm", "checksum", "checksum_url",
                  "default_disk_gib", "min_disk_gib", "min_memory_mib", "default_user", "cache"]
        read_only_fields = fields

    def get_source(self, template) -> str:
        return "built here" if template.recipe else "download"

    def get_cache(self, template) -> list[dict]:
        rows = []
        for host, entry in self.context["cache"].get(template.pk, []):
            rows.append({
                "host": host.name,
                "status": entry.status if entry else "absent",
                "detail": entry.detail if entry else "",
                "digest": entry.digest if entry else "",
                "size": entry.size if entry else 0,
                "error": entry.last_error if entry else "",
            })
        return CacheStatusSerializer(rows, many=True).data


class OperationSerializer(serializers.ModelSerializer):
    class Meta:
        model = Operation
        fields = ["id", "kind", "status", "progress", "attempts", "params", "result", "last_error", "created_at",
                  "started_at", "finished_at"]
        read_only_fields = fields


class ApplianceSerializer(serializers.ModelSerializer):
    template = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    host = serializers.SlugRelatedField(slug_field="name", read_only=True)
    mesh_ipv4 = serializers.SerializerMethodField()
    mesh_ipv6 = serializers.SerializerMethodField()
    operation = serializers.SerializerMethodField(help_text="The job running now, if any.")

    class Meta:
        model = Appliance
        fields = ["id", "name", "template", "host", "status", "status_detail", "vcpus", "memory_mib", "disk_gib",
                  "mesh_ipv4", "mesh_ipv6", "ssh_authorized_keys", "last_error", "created_at", "ready_at",
                  "operation"]
        read_only_fields = fields

    def get_mesh_ipv4(self, appliance) -> str | None:
        return appliance.peer.ipv4 if appliance.peer_id else None

    def get_mesh_ipv6(self, appliance) -> str | None:
        return appliance.peer.ipv6 if appliance.peer_id else None

    def get_operation(self, appliance) -> dict | None:
        running = [op for op in appliance.operations.all() if op.status in ("pending", "running", "retrying")]
        return OperationSerializer(running[0]).data if running else None


class ApplianceDetailSerializer(ApplianceSerializer):
    class Meta(ApplianceSerializer.Meta):
        fields = [*ApplianceSerializer.Meta.fields, "user_data", "failure_console_log"]
        read_only_fields = fields


class ApplianceCreateRequest(serializers.Serializer):
    # Types and ranges are checked by the service, which names the field.
    name = serializers.JSONField()
    template = serializers.JSONField()
    vcpus = serializers.JSONField(required=False)
    memory_mib = serializers.JSONField(required=False)
    disk_gib = serializers.JSONField(required=False)
    ssh_authorized_keys = serializers.JSONField(required=False, help_text="OpenSSH public key lines")
    user_data = serializers.JSONField(required=False, help_text="your own #cloud-config, merged into ours")


class MigrateRequest(serializers.Serializer):
    host = serializers.CharField(required=False, allow_blank=True, help_text="target host; blank picks one with room")


class SnapshotSerializer(serializers.ModelSerializer):
    class Meta:
        model = Snapshot
        fields = ["id", "name", "description", "with_memory", "state", "created_at"]
        read_only_fields = fields


class SnapshotCreateRequest(serializers.Serializer):
    name = serializers.JSONField()
    description = serializers.JSONField(required=False)


class SnapshotListSerializer(serializers.Serializer):
    supports = serializers.DictField(help_text="what this appliance's hypervisor can snapshot")
    results = SnapshotSerializer(many=True)



class ArchiveSerializer(serializers.ModelSerializer):
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = Archive
        fields = ["id", "sha256", "size", "secrets_included", "consistency", "created_at", "manifest", "download_url"]
        read_only_fields = fields

    def get_download_url(self, archive) -> str:
        query = "?secrets=include" if archive.secrets_included else ""
        return f"/api/meshnet/appliances/{archive.appliance_id}/archive{query}"


class ArchiveImportRequest(serializers.Serializer):
    # Either an uploaded archive (multipart) or the URL of one this server
    # exported. Plain fields, so that a multipart form needs no JSON quoting.
    archive = serializers.FileField(required=False, help_text="an appliance-{id}.tar.gz")
    url = serializers.CharField(required=False, allow_blank=True,
                                help_text="…/api/meshnet/appliances/<id>/archive on this server")
    name = serializers.CharField(required=False, allow_blank=True, help_text="defaults to the archived appliance's name")
    ssh_authorized_keys = serializers.ListField(child=serializers.CharField(), required=False,
                                                help_text="OpenSSH public key lines")
    user_data = serializers.CharField(required=False, allow_blank=True,
                                      help_text="your own #cloud-config, merged into ours")


SECRETS_PARAMETER = OpenApiParameter(
    "secrets", str, enum=["include", "exclude"], required=False,
    description="include: the WireGuard keys and cloud-config credentials too (owner only; a token, or a passkey "
                "checked within 5 minutes)",
)
