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
        # Fresh from the database: a worker may have moved a step since the
        # identity (and any prefetched steps) were loaded.
        return ProvisioningStepSerializer(identity.steps.order_by("kind"), many=True).data


def identity_payload(identity: Identity | None) -> dict | None:
    return IdentitySerializer(identity).data if identity is not None else None
