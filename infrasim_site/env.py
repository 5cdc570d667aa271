"""Strict environment parsing.

Every reader fails at start-up with ImproperlyConfigured naming the variable,
so a typo in production is a refusal to boot, never a silent default
(the Healthchecks ``envbool`` approach).
"""

from __future__ import annotations

import ipaddress
import os
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    return None if value is None else value.strip()


def env_str(name: str, default: str) -> str:
    value = _raw(name)
    return default if value is None or value == "" else value


def env_bool(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}: expected a boolean (true/false/1/0/yes/no), got {value!r}")


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    value = _raw(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}: expected an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}: must be at least {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ImproperlyConfigured(f"{name}: must be at most {maximum}, got {number}")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    value = _raw(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_domain(name: str, default: str) -> str:
    """A DNS name (RFC 1123 labels), lower-cased, without a trailing dot."""
    value = env_str(name, default).lower().rstrip(".")
    labels = value.split(".")
    if len(value) > 253 or not all(_is_dns_label(label) for label in labels):
        raise ImproperlyConfigured(f"{name}: expected a DNS name like example.com, got {value!r}")
    return value


def _is_dns_label(label: str) -> bool:
    return (
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and all(c.isascii() and (c.isalnum() or c == "-") for c in label)
    )


def env_origin(name: str, default: str) -> str:
    """A web origin: scheme://host[:port] with no path, as WebAuthn compares it."""
    value = env_str(name, default).rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname or parts.path or parts.query:
        raise ImproperlyConfigured(f"{name}: expected an origin like https://example.com[:port], got {value!r}")
    try:
        parts.port
    except ValueError:
        raise ImproperlyConfigured(f"{name}: bad port in {value!r}") from None
    return value


def env_url(name: str, default: str, *, schemes: set[str]) -> str:
    """A URL with one of `schemes`; with an empty default, unset means off ("")."""
    value = env_str(name, default)
    if value == "":
        return ""
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        raise ImproperlyConfigured(f"{name}: expected a URL with scheme {sorted(schemes)}, got {value!r}")
    try:
        parts.port
    except ValueError:
        raise ImproperlyConfigured(f"{name}: bad port in {value!r}") from None
    return value


def env_host_port(name: str, default: str) -> tuple[str, int]:
    """host:port, or [v6]:port, as WireGuard's Endpoint expects."""
    value = env_str(name, default)
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ImproperlyConfigured(f"{name}: expected host:port, got {value!r}")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ImproperlyConfigured(f"{name}: unbalanced brackets in {value!r}")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ImproperlyConfigured(f"{name}: bad IPv6 address in {value!r}") from None
    elif not (_is_ipv4(host) or all(_is_dns_label(label) for label in host.rstrip(".").split("."))):
        raise ImproperlyConfigured(f"{name}: bad host in {value!r}")
    return host, int(port_text)


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def env_rates(name: str) -> dict[str, str]:
    """scope=N/period pairs, comma-separated (period: sec, min, hour, day)."""
    rates = {}
    for item in env_list(name, []):
        scope, sep, rate = item.partition("=")
        count, slash, period = rate.strip().partition("/")
        if not sep or not scope.strip() or not count.isdigit() or not slash or period[:1] not in {"s", "m", "h", "d"}:
            raise ImproperlyConfigured(f"{name}: expected scope=N/period (e.g. signup=10/hour), got {item!r}")
        rates[scope.strip()] = rate.strip()
    return rates
