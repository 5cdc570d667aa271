from django_otp_webauthn.models import WebAuthnCredential
from rest_framework import serializers

from identity.models import ApiToken, User
from identity.serializers import IdentitySerializer


class RegistrationOptionsRequest(serializers.Serializer):
    display_name = serializers.CharField(required=False, allow_blank=True, max_length=256, trim_whitespace=False)
    enrollment_token = serializers.CharField(required=False, max_length=256)


class Base64UrlField(serializers.RegexField):
    """A base64url string (padding optional) that decodes: a length of 4n+1
    characters cannot, whatever the alphabet."""

    default_error_messages = {"invalid": "Not a base64url string."}

    def __init__(self, **kwargs):
        super().__init__(r"^[A-Za-z0-9_-]*={0,2}$", **kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if len(value.rstrip("=")) % 4 == 1:
            self.fail("invalid")
        return value


class _AttestationResponse(serializers.Serializer):
    clientDataJSON = Base64UrlField(max_length=8192)
    attestationObject = Base64UrlField(max_length=65536)
    transports = serializers.ListField(child=serializers.CharField(max_length=32), required=False, max_length=16)


class _AssertionResponse(serializers.Serializer):
    clientDataJSON = Base64UrlField(max_length=8192)
    authenticatorData = Base64UrlField(max_length=8192)
    signature = Base64UrlField(max_length=2048)
    userHandle = Base64UrlField(required=False, allow_null=True, allow_blank=True, max_length=512)


class _PublicKeyCredential(serializers.Serializer):
    id = Base64UrlField(max_length=1400)
    rawId = Base64UrlField(max_length=1400)
    type = serializers.ChoiceField(choices=["public-key"])
    authenticatorAttachment = serializers.CharField(required=False, allow_null=True, max_length=32)
    clientExtensionResults = serializers.DictField(required=False)


class RegistrationResponse(_PublicKeyCredential):
    """RegistrationResponseJSON as the browser's toJSON() gives it, plus an
    optional name for the new passkey."""

    response = _AttestationResponse()
    passkey_name = serializers.CharField(required=False, allow_blank=True, max_length=256)


class AuthenticationResponse(_PublicKeyCredential):
    response = _AssertionResponse()


class UserSerializer(serializers.ModelSerializer):
    is_operator = serializers.BooleanField(source="is_staff", read_only=True)

    class Meta:
        model = User
        fields = ["account_id", "display_name", "is_operator", "date_joined"]


class MeSerializer(serializers.Serializer):
    user = UserSerializer()
    identity = IdentitySerializer(allow_null=True)


class AvailabilityRequest(serializers.Serializer):
    handle = serializers.CharField(max_length=256, trim_whitespace=False)


class AvailabilitySerializer(serializers.Serializer):
    handle = serializers.CharField()
    available = serializers.BooleanField()
    checks = serializers.DictField(child=serializers.CharField(), help_text="database, dns, matrix, s3: available, taken, not_configured or unknown: <why>")


class ClaimHandleRequest(serializers.Serializer):
    handle = serializers.CharField(max_length=256, trim_whitespace=False)


class PasskeySerializer(serializers.ModelSerializer):
    class Meta:
        model = WebAuthnCredential
        fields = ["id", "name", "created_at", "last_used_at", "discoverable", "backup_state"]
        read_only_fields = ["id", "created_at", "last_used_at", "discoverable", "backup_state"]


class ApiTokenSerializer(serializers.ModelSerializer):
    class Meta:
        model = ApiToken
        fields = ["id", "name", "scope", "prefix", "created_at", "expires_at", "revoked_at", "last_used_at"]
        read_only_fields = ["id", "prefix", "created_at", "revoked_at", "last_used_at"]
        extra_kwargs = {
            "scope": {"help_text": "read: safe methods only; write: also changes to resources. No scope covers credentials."}
        }


class ApiTokenCreated(ApiTokenSerializer):
    token = serializers.CharField(read_only=True, help_text="The secret. Shown this once; store it now.")

    class Meta(ApiTokenSerializer.Meta):
        fields = ApiTokenSerializer.Meta.fields + ["token"]
