"""Provisioning backends behind one interface: `provision(identity)`.

Each backend is switched on by its settings; `provider_for` answers None for a
backend that is not configured, and the step is then recorded as
"not configured" (never as a success). The DNS, Matrix and S3 backends arrive
with the provisioning issue.
"""

from __future__ import annotations

from typing import Protocol


class Provider(Protocol):
    def provision(self, identity) -> None: ...


_CONFIGURED: dict[str, Provider] = {}


def provider_for(kind: str) -> Provider | None:
    return _CONFIGURED.get(kind)
