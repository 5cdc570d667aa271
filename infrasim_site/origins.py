"""Which browser origins may act on this site: one rule for HTTP and WebSocket.

Django's CSRF check compares scheme, host and port against
CSRF_TRUSTED_ORIGINS; channels' AllowedHostsOriginValidator compares only the
host, so a page on another port of the same host could open /ws/events/ with
the user's cookies. Both now go through is_trusted_origin.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _normalise(origin: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    # An origin is scheme://host[:port] and nothing else.
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


def trusted_origins() -> set[tuple[str, str, int]]:
    configured = [
        settings.WEBAUTHN_RP_ORIGIN,
        *settings.CSRF_TRUSTED_ORIGINS,
        *getattr(settings, "OTP_WEBAUTHN_ALLOWED_ORIGINS", []),
    ]
    return {normalised for origin in configured if (normalised := _normalise(origin)) is not None}


def is_trusted_origin(origin: str) -> bool:
    """True when `origin` is exactly the scheme, host and port of a configured
    origin; a configured `*.example.com` stands for its subdomains, as in
    CSRF_TRUSTED_ORIGINS."""
    normalised = _normalise(origin)
    if normalised is None:
        return False
    scheme, host, port = normalised
    for trusted_scheme, trusted_host, trusted_port in trusted_origins():
        if (scheme, port) != (trusted_scheme, trusted_port):
            continue
        if host == trusted_host or (trusted_host.startswith("*.") and host.endswith(trusted_host[1:])):
            return True
    return False


def websocket_sources() -> list[str]:
    """The trusted origins as ws:// and wss:// sources, for CSP connect-src."""
    sources = []
    for scheme, host, port in sorted(trusted_origins()):
        ws_scheme = "wss" if scheme == "https" else "ws"
        shown_host = f"[{host}]" if ":" in host else host
        default = port == _DEFAULT_PORTS[scheme]
        sources.append(f"{ws_scheme}://{shown_host}" + ("" if default else f":{port}"))
    return sources
