"""WireGuard configuration text, as `wg syncconf` and wg-quick read it."""

from mesh.wgconf import GatewayPeer, gateway_config, peer_config

GATEWAY_KEY = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
PEER_KEY = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
PSK = "FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE="


def test_gateway_config_lists_each_peer_with_its_two_host_routes():
    text = gateway_config(
        private_key=GATEWAY_KEY,
        listen_port=51820,
        peers=[
            GatewayPeer(PEER_KEY, PSK, "100.96.0.2", "fd42::2"),
            GatewayPeer(GATEWAY_KEY, None, "100.96.0.3", "fd42::3"),
        ],
    )
    assert text == (
        f"[Interface]\nPrivateKey = {GATEWAY_KEY}\nListenPort = 51820\n"
        f"\n[Peer]\nPublicKey = {PEER_KEY}\nPresharedKey = {PSK}\nAllowedIPs = 100.96.0.2/32, fd42::2/128\n"
        f"\n[Peer]\nPublicKey = {GATEWAY_KEY}\nAllowedIPs = 100.96.0.3/32, fd42::3/128\n"
    )


def test_gateway_config_without_peers_is_just_the_interface():
    assert gateway_config(private_key=GATEWAY_KEY, listen_port=9, peers=[]) == (
        f"[Interface]\nPrivateKey = {GATEWAY_KEY}\nListenPort = 9\n"
    )


def _peer(**overrides) -> str:
    values = dict(
        name="laptop",
        private_key=PEER_KEY,
        ipv4="100.96.0.2",
        ipv6="fd42::2",
        gateway_public_key=GATEWAY_KEY,
        preshared_key=PSK,
        endpoint="vpn.example.com:51820",
        allowed_ips=["100.96.0.0/16", "fd42::/64"],
        keepalive=25,
    )
    return peer_config(**{**values, **overrides})


def test_peer_config_is_a_complete_wg_quick_file():
    assert _peer() == (
        "# InfraSim mesh peer: laptop\n"
        "[Interface]\n"
        f"PrivateKey = {PEER_KEY}\n"
        "Address = 100.96.0.2/32, fd42::2/128\n"
        "\n"
        "[Peer]\n"
        f"PublicKey = {GATEWAY_KEY}\n"
        f"PresharedKey = {PSK}\n"
        "Endpoint = vpn.example.com:51820\n"
        "AllowedIPs = 100.96.0.0/16, fd42::/64\n"
        "PersistentKeepalive = 25\n"
    )


def test_peer_config_without_the_private_key_says_where_it_goes():
    lines = _peer(private_key=None).splitlines()
    assert "# PrivateKey = <the private key that stays on your device>" in lines
    assert not any(line.startswith("PrivateKey") for line in lines)


def test_peer_config_leaves_out_an_absent_preshared_key_and_a_zero_keepalive():
    text = _peer(preshared_key=None, keepalive=0)
    assert "PresharedKey" not in text
    assert "PersistentKeepalive" not in text
