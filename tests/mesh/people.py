"""People for the mesh tests: a user with a claimed handle, and a signed-in API client."""

from django.test import Client

from identity.handles import skeleton
from identity.models import Identity, User

BACKEND = "django_otp_webauthn.backends.WebAuthnBackend"


def person(handle: str, *, operator: bool = False) -> User:
    user = User.objects.create_user(
        display_name=handle.title(), signup_state="active", is_staff=operator, is_superuser=operator
    )
    Identity.objects.create(user=user, handle=handle, handle_skeleton=skeleton(handle), status="active")
    return user


def client_for(user) -> Client:
    client = Client()
    client.force_login(user, backend=BACKEND)
    return client
