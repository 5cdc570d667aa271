"""WebAuthn ceremonies on top of django-otp-webauthn's helper.

The package is built for passkeys as a second factor; InfraSim uses it for
passkeys only, so the helper insists on discoverable credentials and on user
verification in both ceremonies.
"""

from __future__ import annotations

from django_otp_webauthn.helpers import WebAuthnHelper
from webauthn.helpers.structs import AuthenticatorSelectionCriteria, ResidentKeyRequirement, UserVerificationRequirement


class PasskeyHelper(WebAuthnHelper):
    def get_discoverable_credentials_preference(self) -> ResidentKeyRequirement:
        return ResidentKeyRequirement.REQUIRED

    def get_credential_name(self, user) -> str:
        return user.display_name

    def get_credential_display_name(self, user) -> str:
        return user.display_name

    def get_generate_registration_options_kwargs(self, *, user) -> dict:
        kwargs = super().get_generate_registration_options_kwargs(user=user)
        kwargs["authenticator_selection"] = AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED,
            require_resident_key=True,
            user_verification=UserVerificationRequirement.REQUIRED,
        )
        return kwargs
