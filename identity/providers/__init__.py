"""Provisioning backends behind one interface.

Each backend has `is_available(handle)`, `provision(identity)` and
`deprovision(identity)`, raising TransientProviderError (retry with backoff)
or PermanentProviderError (fail fast). A backend is switched on by its
settings; `provider_for` answers None for one that is not configured, and the
step is then recorded as "not configured", never as a success.
"""

from __future__ import annotations

from typing import Protocol

from django.conf import settings


class Provider(Protocol):
    kind: str

    def is_available(self, handle: str) -> bool: ...

    def provision(self, identity) -> str: ...

    def deprovision(self, identity) -> str: ...


def provider_for(kind: str) -> Provider | None:
    if kind == "dns" and settings.DNS_SERVER:
        from identity.providers.dns import DnsProvider, DnsSettings

        return DnsProvider(
            DnsSettings(
                base_domain=settings.BASE_DOMAIN,
                server=settings.DNS_SERVER,
                port=settings.DNS_PORT,
                zone=settings.DNS_ZONE,
                tsig_name=settings.DNS_TSIG_KEY_NAME,
                tsig_algorithm=settings.DNS_TSIG_ALGORITHM,
                tsig_secret=settings.DNS_TSIG_SECRET,
                target_a=tuple(settings.DNS_TARGET_A),
                target_aaaa=tuple(settings.DNS_TARGET_AAAA),
                target_cname=settings.DNS_TARGET_CNAME,
                ttl=settings.DNS_TTL,
            )
        )
    if kind == "matrix" and settings.MATRIX_HOMESERVER_URL:
        from identity.providers.matrix import MatrixProvider, MatrixSettings

        return MatrixProvider(
            MatrixSettings(
                homeserver_url=settings.MATRIX_HOMESERVER_URL,
                admin_token=settings.MATRIX_ADMIN_TOKEN,
                server_name=settings.MATRIX_DOMAIN,
            )
        )
    if kind == "s3" and settings.S3_ENDPOINT_URL:
        from identity.providers.s3 import S3Provider, S3Settings

        return S3Provider(
            S3Settings(
                endpoint_url=settings.S3_ENDPOINT_URL,
                region=settings.S3_REGION,
                access_key=settings.S3_ACCESS_KEY_ID,
                secret_key=settings.S3_SECRET_ACCESS_KEY,
                bucket_prefix=settings.S3_BUCKET_PREFIX,
            )
        )
    return None
