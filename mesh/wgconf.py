"""Rendering WireGuard configuration.

`gateway_config` writes the gateway interface in `wg` format (what
`wg syncconf` reads); `peer_config` writes a peer's wg-quick file.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple


class GatewayPeer(NamedTuple):
    public_key: str
    preshared_key: str | None
    ipv4: str
    ipv6: str


def gateway_config(*, private_key: str, listen_port: int, peers: Iterable[GatewayPeer]) -> str:
    parts = [f"[Interface]\nPrivateKey = {private_key}\nListenPort = {listen_port}\n"]
    append = parts.append
    for peer in peers:
        psk = f"PresharedKey = {peer.preshared_key}\n" if peer.preshared_key else ""
        append(f"\n[Peer]\nPublicKey = {peer.public_key}\n{psk}AllowedIPs = {peer.ipv4}/32, {peer.ipv6}/128\n")
    return "".join(parts)


def peer_config(
    *,
    name: str,
    private_key: str | None,
    ipv4: str,
    ipv6: str,
    gateway_public_key: str,
    preshared_key: str | None,
    endpoint: str,
    allowed_ips: list[str],
    keepalive: int,
) -> str:
    """A wg-quick file. Without the private key (the user's own key, or a
    generated one that was shown once), the line says where to put it."""
    key_line = (
        f"PrivateKey = {private_key}"
        if private_key
        else "# PrivateKey = <the private key that stays on your device>"
    )
    lines = [
        f"# InfraSim mesh peer: {name}",
        "[Interface]",
        key_line,
        f"Address = {ipv4}/32, {ipv6}/128",
        "",
        "[Peer]",
        f"PublicKey = {gateway_public_key}",
    ]
    if preshared_key:
        lines.append(f"PresharedKey = {preshared_key}")
    lines += [f"Endpoint = {endpoint}", f"AllowedIPs = {', '.join(allowed_ips)}"]
    if keepalive:
        lines.append(f"PersistentKeepalive = {keepalive}")
    return "\n".join(lines) + "\n"
