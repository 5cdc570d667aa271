"""A software WebAuthn authenticator for the test suite.

It plays both the authenticator and the browser (the "client"): from the
server's PublicKeyCredentialCreationOptionsJSON / RequestOptionsJSON it builds
the RegistrationResponseJSON / AuthenticationResponseJSON a browser's
`credential.toJSON()` would send, with real ES256 (P-256) signatures, a CBOR
attestation object in the "none" format and discoverable (resident)
credentials that remember their user handle.

Nothing is faked on the server side: the responses go through py_webauthn's
verification exactly as a browser's would. Per-call overrides (origin, user
verification, challenge, rp id, ...) produce the broken responses negative
tests need.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

# Authenticator data flags (WebAuthn §6.1).
FLAG_UP = 0x01
FLAG_UV = 0x04
FLAG_BE = 0x08
FLAG_BS = 0x10
FLAG_AT = 0x40
FLAG_ED = 0x80

COSE_ALG_ES256 = -7

_UNSET = object()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def cose_es256_public_key(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """COSE_Key (RFC 9053) of an EC2 P-256 key for ES256."""
    numbers = public_key.public_numbers()
    return cbor2.dumps(
        {
            1: 2,  # kty: EC2
            3: COSE_ALG_ES256,  # alg: ES256
            -1: 1,  # crv: P-256
            -2: numbers.x.to_bytes(32, "big"),
            -3: numbers.y.to_bytes(32, "big"),
        }
    )


@dataclass
class Credential:
    """A discoverable credential source kept "inside" the authenticator."""

    credential_id: bytes
    private_key: ec.EllipticCurvePrivateKey
    rp_id: str
    user_handle: bytes
    user_name: str
    sign_count: int = 0

    @property
    def id(self) -> str:
        return b64url(self.credential_id)


@dataclass
class SoftAuthenticator:
    rp_id: str = "localhost"
    origin: str = "http://localhost"
    aaguid: bytes = bytes(16)
    user_verification: bool = True
    # Platform passkeys often keep the counter at 0; ours counts by default so
    # that sign-count checks are exercised too.
    counter_step: int = 1
    credentials: list[Credential] = field(default_factory=list)

    # --- helpers ---------------------------------------------------------------

    def _client_data(self, *, type_: str, challenge: str, origin: str, cross_origin: bool = False) -> bytes:
        return json.dumps(
            {"type": type_, "challenge": challenge, "origin": origin, "crossOrigin": cross_origin},
            separators=(",", ":"),
        ).encode()

    def _auth_data(self, *, rp_id: str, flags: int, sign_count: int, attested: bytes = b"") -> bytes:
        rp_id_hash = hashlib.sha256(rp_id.encode()).digest()
        return rp_id_hash + bytes([flags]) + struct.pack(">I", sign_count) + attested

    def credentials_for(self, rp_id: str | None = None) -> list[Credential]:
        rp_id = rp_id or self.rp_id
        return [c for c in self.credentials if c.rp_id == rp_id]

    # --- navigator.credentials.create() ------------------------------------------

    def create(
        self,
        options: dict,
        *,
        origin: str | None = None,
        user_verification: bool | None = None,
        rp_id: str | None = None,
        challenge: str | None = None,
        type_: str = "webauthn.create",
        credential_id: bytes | None = None,
        store: bool = True,
    ) -> dict:
        """Make a new resident credential for options["rp"]["id"] and return
        the RegistrationResponseJSON. `options` is the server's
        PublicKeyCredentialCreationOptionsJSON. Keyword arguments override
        what an honest client would send."""
        # `rp_id` overrides only what goes into the authenticator data (the
        # rpIdHash), as a lying authenticator would.
        rp_id_hashed = rp_id or (options.get("rp") or {}).get("id") or self.rp_id
        rp_id = (options.get("rp") or {}).get("id") or self.rp_id
        algs = [p.get("alg") for p in options.get("pubKeyCredParams", [])]
        if algs and COSE_ALG_ES256 not in algs:
            raise ValueError(f"the server does not accept ES256: {algs}")
        excluded = {d["id"] for d in options.get("excludeCredentials") or []}
        if excluded & {c.id for c in self.credentials_for(rp_id)}:
            raise ValueError("InvalidStateError: this authenticator already holds an excluded credential")

        uv = self.user_verification if user_verification is None else user_verification
        private_key = ec.generate_private_key(ec.SECP256R1())
        cred_id = credential_id if credential_id is not None else os.urandom(32)
        user = options["user"]
        credential = Credential(
            credential_id=cred_id,
            private_key=private_key,
            rp_id=rp_id,
            user_handle=b64url_decode(user["id"]),
            user_name=user.get("name", ""),
        )

        attested = (
            self.aaguid
            + struct.pack(">H", len(cred_id))
            + cred_id
            + cose_es256_public_key(private_key.public_key())
        )
        flags = FLAG_UP | FLAG_AT | (FLAG_UV if uv else 0)
        auth_data = self._auth_data(
            rp_id=rp_id_hashed, flags=flags, sign_count=credential.sign_count, attested=attested
        )
        attestation_object = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        client_data = self._client_data(
            type_=type_,
            challenge=challenge if challenge is not None else options["challenge"],
            origin=origin or self.origin,
        )
        if store:
            # A resident credential replaces one of the same user on this rp.
            self.credentials = [
                c for c in self.credentials if not (c.rp_id == rp_id and c.user_handle == credential.user_handle)
            ]
            self.credentials.append(credential)
        return {
            "id": b64url(cred_id),
            "rawId": b64url(cred_id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64url(client_data),
                "attestationObject": b64url(attestation_object),
                "transports": ["internal"],
            },
            "clientExtensionResults": {"credProps": {"rk": True}},
            "authenticatorAttachment": "platform",
        }

    # --- navigator.credentials.get() -----------------------------------------------

    def get(
        self,
        options: dict,
        *,
        credential: Credential | None = None,
        origin: str | None = None,
        user_verification: bool | None = None,
        rp_id: str | None = None,
        challenge: str | None = None,
        type_: str = "webauthn.get",
        user_handle: bytes | None | object = _UNSET,
    ) -> dict:
        """Sign the server's PublicKeyCredentialRequestOptionsJSON with a
        stored credential and return the AuthenticationResponseJSON. With an
        empty allowCredentials the newest discoverable credential for the rp
        is used (or `credential`, as if the person picked it)."""
        if credential is None:
            allowed = {d["id"] for d in options.get("allowCredentials") or []}
            candidates = self.credentials_for(options.get("rpId") or self.rp_id)
            if allowed:
                candidates = [c for c in candidates if c.id in allowed]
            if not candidates:
                raise LookupError("NotAllowedError: no credential for this relying party")
            credential = candidates[-1]

        uv = self.user_verification if user_verification is None else user_verification
        credential.sign_count += self.counter_step
        flags = FLAG_UP | (FLAG_UV if uv else 0)
        auth_data = self._auth_data(rp_id=rp_id or credential.rp_id, flags=flags, sign_count=credential.sign_count)
        client_data = self._client_data(
            type_=type_,
            challenge=challenge if challenge is not None else options["challenge"],
            origin=origin or self.origin,
        )
        signature = credential.private_key.sign(
            auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256())
        )
        handle = credential.user_handle if user_handle is _UNSET else user_handle
        return {
            "id": credential.id,
            "rawId": credential.id,
            "type": "public-key",
            "response": {
                "clientDataJSON": b64url(client_data),
                "authenticatorData": b64url(auth_data),
                "signature": b64url(signature),
                "userHandle": b64url(handle) if handle is not None else None,
            },
            "clientExtensionResults": {},
            "authenticatorAttachment": "platform",
        }
