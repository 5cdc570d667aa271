"""One origin rule for the CSRF check and the WebSocket handshake: scheme,
host and port must all match a configured origin."""

import pytest

from infrasim_site.origins import is_trusted_origin, websocket_sources


@pytest.fixture(autouse=True)
def origins(settings):
    settings.WEBAUTHN_RP_ORIGIN = "https://infrasim.example"
    settings.CSRF_TRUSTED_ORIGINS = ["https://infrasim.example", "http://localhost:8080", "https://*.lab.example"]
    settings.OTP_WEBAUTHN_ALLOWED_ORIGINS = ["https://infrasim.example"]


@pytest.mark.parametrize(
    "origin",
    ["https://infrasim.example", "https://infrasim.example:443", "HTTPS://InfraSim.Example", "http://localhost:8080", "https://a.lab.example"],
)
def test_configured_origins_are_trusted(origin):
    assert is_trusted_origin(origin)


@pytest.mark.parametrize(
    "origin",
    [
        "http://infrasim.example",
        "https://infrasim.example:8443",
        "http://localhost:9999",
        "http://localhost",
        "https://infrasim.example.evil.example",
        "https://evil-infrasim.example",
        "https://lab.example",
        "https://infrasim.example/path",
        "https://user@infrasim.example",
        "null",
        "",
        "https://infrasim.example:99999",
    ],
)
def test_anything_else_is_not(origin):
    assert not is_trusted_origin(origin)


def test_websocket_sources_mirror_the_trusted_origins():
    assert websocket_sources() == ["ws://localhost:8080", "wss://*.lab.example", "wss://infrasim.example"]
