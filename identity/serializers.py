"""How an identity is shown, one shape for the API and for the WebSocket
events the console listens to (a page never sees a field the API lacks)."""

from rest_framework import serializers

from identity.models import Identity, ProvisioningStep


class ProvisioningStepSerializer(serializers.ModelSerializer):
    class Meta:
        model = ProvisioningStep
        fields = ["kind", "status", "attempts", "last_error", "detail", "next_attempt_at"]
        read_only_fields = fields


class IdentitySerializer(serializers.ModelSerializer):
    steps = serializers.SerializerMethodField()

    class Meta:
        model = Identity
        fields = ["handle", "subdomain", "matrix_id", "bucket", "status", "steps"]
        read_only_fields = fields

    def get_steps(self, identity) -> list[dict]:
        # Uses the steps prefetched with the identity (identity_for does), and
        # sorts here so that the prefetch serves; refresh_from_db drops it.
        steps = sorted(identity.steps.all(), key=lambda step: step.kind)
        return ProvisioningStepSerializer(steps, many=True).data


def identity_payload(identity: Identity | None) -> dict | None:
    return IdentitySerializer(identity).data if identity is not None else None
