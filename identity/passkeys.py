"""WebAuthn ceremonies on top of django-otp-webauthn's helper.

The package is built for passkeys as a second factor; InfraSim uses it for
passkeys only, so the helper insists on discoverable credentials and on user
verification in both ceremonies. It needs no request: the relying party comes
from settings, so services can run ceremonies without HTTP.
"""

from __future__ import annotations

from django_otp_webauthn.helpers import WebAuthnHelper
from django_otp_webauthn.settings import app_settings
from django_otp_webauthn.models import WebAuthnCredential
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialUserEntity,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)


class PasskeyHelper(WebAuthnHelper):
    def __init__(self, *, new_user_handle: bytes | None = None):
        # The package's helper keeps a request only for optional callables
        # that InfraSim does not configure.
        super().__init__(request=None)
        self.new_user_handle = new_user_handle

    def get_discoverable_credentials_preference(self) -> ResidentKeyRequirement:
        return ResidentKeyRequirement.REQUIRED

    def get_credential_name(self, user) -> str:
        return user.display_name

    def get_credential_display_name(self, user) -> str:
        return user.display_name

    def get_user_entity(self, user) -> PublicKeyCredentialUserEntity:
        if user.pk is not None:
            return super().get_user_entity(user)
        # A sign-up: the account row is only written once its passkey is
        # verified, so its user handle lives in the pending ceremony until then.
        return PublicKeyCredentialUserEntity(
            id=self.new_user_handle, name=self.get_credential_name(user), display_name=self.get_credential_display_name(user)
        )

    def get_generate_registration_options_kwargs(self, *, user) -> dict:
        # Written out rather than extended: the package's version looks up the
        # user's credentials to exclude, which needs a saved user, and a
        # sign-up has none yet.
        rp = self.get_relying_party()
        entity = self.get_user_entity(user)
        kwargs = {
            "attestation": self.get_attestation_conveyance_preference(),
            "authenticator_selection": AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.REQUIRED,
                require_resident_key=True,
                user_verification=UserVerificationRequirement.REQUIRED,
            ),
            "challenge": self.generate_challenge(),
            "exclude_credentials": WebAuthnCredential.get_credential_descriptors_for_user(user) if user.pk else [],
            "rp_id": rp.id,
            "rp_name": rp.name,
            "user_display_name": entity.display_name,
            "user_id": entity.id,
            "user_name": entity.name,
            "timeout": app_settings.OTP_WEBAUTHN_TIMEOUT_SECONDS * 1000,
        }
        algorithms = self.get_supported_key_algorithms()
        if algorithms:
            kwargs["supported_pub_key_algs"] = algorithms
        return kwargs
