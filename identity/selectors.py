from django.db.models import QuerySet
from django_otp_webauthn.models import WebAuthnCredential

from identity.models import ApiToken, Identity, User, UserSession
from identity.sessions import stored_key


def identity_for(user: User) -> Identity | None:
    return Identity.objects.filter(user=user).prefetch_related("steps").first()


def passkeys_for(user: User) -> QuerySet[WebAuthnCredential]:
    return WebAuthnCredential.objects.filter(user=user).order_by("created_at")


def api_tokens_for(user: User) -> QuerySet[ApiToken]:
    # Tokens are credentials: personal, also for operators (who revoke others' in the admin).
    return ApiToken.objects.owned_by(user).order_by("-created_at")


def other_sessions_count(user: User, current_session_key: str | None) -> int:
    from django.utils import timezone

    sessions = UserSession.objects.filter(user=user, expire_date__gt=timezone.now())
    if current_session_key:
        sessions = sessions.exclude(session_key=stored_key(current_session_key))
    return sessions.count()
