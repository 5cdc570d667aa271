"""@handle:MATRIX_DOMAIN on a Synapse homeserver through its admin API.

Accounts InfraSim creates carry an external id (auth provider "infrasim",
id = the account's UUID). A re-run that finds the account with our external
id counts as done; one without it belongs to somebody else and is left alone.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.parse
import urllib.request

from identity.providers.errors import PermanentProviderError, TransientProviderError

AUTH_PROVIDER = "infrasim"


@dataclasses.dataclass(frozen=True)
class MatrixSettings:
    homeserver_url: str
    admin_token: str
    server_name: str
    timeout: float = 10.0


class MatrixProvider:
    kind = "matrix"

    def __init__(self, config: MatrixSettings):
        self.config = config

    def mxid(self, handle: str) -> str:
        return f"@{handle}:{self.config.server_name}"

    def _call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        request = urllib.request.Request(
            self.config.homeserver_url.rstrip("/") + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.config.admin_token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            payload = _json_or_empty(exc.read())
            if exc.code >= 500:
                raise TransientProviderError(f"Synapse answered {exc.code}: {payload.get('error', exc.reason)}") from exc
            if exc.code in (401, 403) and payload.get("errcode") in {"M_UNKNOWN_TOKEN", "M_MISSING_TOKEN", "M_FORBIDDEN"}:
                raise PermanentProviderError(f"Synapse refused the admin token: {payload.get('error', exc.reason)}") from exc
            return exc.code, payload
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TransientProviderError(f"Synapse at {self.config.homeserver_url} unreachable: {reason}") from exc

    def _user(self, handle: str) -> dict | None:
        status, payload = self._call("GET", f"/_synapse/admin/v2/users/{urllib.parse.quote(self.mxid(handle))}")
        if status == 404:
            return None
        if status != 200:
            raise PermanentProviderError(f"Synapse lookup of {self.mxid(handle)} failed: {status} {payload}")
        return payload

    @staticmethod
    def _ours(user: dict, identity) -> bool:
        return any(
            ext.get("auth_provider") == AUTH_PROVIDER and ext.get("external_id") == str(identity.user.account_id)
            for ext in user.get("external_ids") or []
        )

    def is_available(self, handle: str) -> bool:
        status, payload = self._call(
            "GET", f"/_synapse/admin/v1/username_available?{urllib.parse.urlencode({'username': handle})}"
        )
        if status == 200:
            return bool(payload.get("available"))
        if payload.get("errcode") in {"M_USER_IN_USE", "M_EXCLUSIVE"}:
            return False
        raise PermanentProviderError(f"Synapse refused the name {handle!r}: {payload.get('error', status)}")

    def provision(self, identity) -> str:
        existing = self._user(identity.handle)
        if existing is not None:
            if self._ours(existing, identity):
                return f"{self.mxid(identity.handle)} already ours"
            raise PermanentProviderError(f"{self.mxid(identity.handle)} already exists and is not ours")
        if not self.is_available(identity.handle):
            raise PermanentProviderError(f"{self.mxid(identity.handle)} is taken on the homeserver")
        status, payload = self._call(
            "PUT",
            f"/_synapse/admin/v2/users/{urllib.parse.quote(self.mxid(identity.handle))}",
            {
                "displayname": identity.user.display_name,
                "external_ids": [{"auth_provider": AUTH_PROVIDER, "external_id": str(identity.user.account_id)}],
                "admin": False,
                "deactivated": False,
            },
        )
        if status not in (200, 201):
            raise PermanentProviderError(f"Synapse could not create {self.mxid(identity.handle)}: {status} {payload}")
        return f"created {self.mxid(identity.handle)}"

    def deprovision(self, identity) -> str:
        existing = self._user(identity.handle)
        if existing is None or not self._ours(existing, identity):
            return f"{self.mxid(identity.handle)} was not ours or already gone"
        if existing.get("deactivated"):
            return f"{self.mxid(identity.handle)} already deactivated"
        status, payload = self._call(
            "POST", f"/_synapse/admin/v1/deactivate/{urllib.parse.quote(self.mxid(identity.handle))}", {"erase": False}
        )
        if status != 200:
            raise PermanentProviderError(f"Synapse could not deactivate {self.mxid(identity.handle)}: {status} {payload}")
        return f"deactivated {self.mxid(identity.handle)}"


def _json_or_empty(raw: bytes) -> dict:
    try:
        value = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
