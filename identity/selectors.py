from django.db.models import QuerySet
from django_otp_webauthn.models import WebAuthnCredential

from identity.models import ApiToken, Identity, User


def identity_for(user: User) -> Identity | None:
    return Identity.objects.filter(user=user).prefetch_related("steps").first()


def passkeys_for(user: User) -> QuerySet[WebAuthnCredential]:
    return WebAuthnCredential.objects.filter(user=user).order_by("created_at")


def api_tokens_for(user: User) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(user=user).order_by("-created_at")
