import base64

from rest_framework import serializers

from forensics.models import Acquisition, SigningKey


class AcquisitionRequest(serializers.Serializer):
    appliance = serializers.CharField(help_text="The running appliance's id.")
    case_ref = serializers.CharField(max_length=200, help_text="Your case or ticket reference.")
    reason = serializers.CharField(max_length=4000, help_text="Why the memory is captured.")
    format = serializers.CharField(required=False, allow_blank=True,
                                   help_text="elf (default), or a kdump-* format the host's QEMU offers.")


class AcquisitionSerializer(serializers.ModelSerializer):
    status = serializers.CharField(read_only=True, help_text="pending, dumping, signing, complete or failed")
    progress = serializers.IntegerField(read_only=True, help_text="percent")
    last_error = serializers.CharField(read_only=True)
    requested_by = serializers.SerializerMethodField()
    key_id = serializers.SerializerMethodField()
    cosigned = serializers.SerializerMethodField()
    evidence_name = serializers.CharField(read_only=True)

    class Meta:
        model = Acquisition
        fields = ["id", "appliance", "requested_by", "case_ref", "reason", "format", "status", "progress", "sha256",
                  "size", "evidence_name", "last_error", "key_id", "log_index", "cosigned", "s3_location", "custody",
                  "created_at", "completed_at"]
        read_only_fields = fields

    def get_requested_by(self, acquisition) -> str:
        user = acquisition.requested_by
        if user is None:
            return ""
        identity = getattr(user, "identity", None)
        return getattr(identity, "handle", "") or user.display_name

    def get_key_id(self, acquisition) -> str:
        return acquisition.signing_key.key_id if acquisition.signing_key_id else ""

    def get_cosigned(self, acquisition) -> bool:
        return bool(acquisition.cosignature)


class CosignRequest(serializers.Serializer):
    credential = serializers.JSONField(help_text="The assertion: PublicKeyCredential.toJSON() from navigator.credentials.get.")


class SigningKeySerializer(serializers.ModelSerializer):
    ed25519 = serializers.SerializerMethodField(help_text="base64 of the 32 raw bytes")
    public_hex = serializers.SerializerMethodField(help_text="securesystemslib's form: keyval.public")

    class Meta:
        model = SigningKey
        fields = ["key_id", "handle", "ed25519", "public_hex", "created_at", "retired_at"]
        read_only_fields = fields

    def get_ed25519(self, key) -> str:
        return base64.b64encode(bytes(key.public_key)).decode()

    def get_public_hex(self, key) -> str:
        return bytes(key.public_key).hex()


class KeyRotateRequest(serializers.Serializer):
    user = serializers.CharField(required=False, allow_blank=True, help_text="Operators: whose key (default: yours).")


class InclusionProofSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    tree_size = serializers.IntegerField()
    leaf_hash = serializers.CharField(help_text="base64")
    hashes = serializers.ListField(child=serializers.CharField(), help_text="base64, leaf side first")


class ConsistencyProofSerializer(serializers.Serializer):
    first = serializers.IntegerField()
    second = serializers.IntegerField()
    hashes = serializers.ListField(child=serializers.CharField(), help_text="base64")


class LogEntrySerializer(serializers.Serializer):
    index = serializers.IntegerField()
    kind = serializers.CharField()
    actor = serializers.CharField()
    subject = serializers.CharField()
    payload = serializers.JSONField()
    recorded_at = serializers.DateTimeField()
    leaf = serializers.CharField(help_text="base64 of the exact bytes hashed (RFC 6962 leaf: SHA-256(0x00 || leaf))")
    leaf_hash = serializers.CharField()
