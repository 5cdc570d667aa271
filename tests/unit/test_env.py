"""Strict environment parsers: a bad value names its variable."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from infrasim_site.env import (
    env_bool,
    env_domain,
    env_host_port,
    env_int,
    env_list,
    env_origin,
    env_rates,
    env_str,
    env_url,
)

NAME = "INFRASIM_UNIT_TEST_VALUE"


@pytest.fixture()
def env(monkeypatch):
    monkeypatch.delenv(NAME, raising=False)
    return lambda value: monkeypatch.setenv(NAME, value)


def _refused(parse, *args, **kwargs):
    with pytest.raises(ImproperlyConfigured) as refused:
        parse(NAME, *args, **kwargs)
    assert str(refused.value).startswith(f"{NAME}:")


def test_unset_gives_the_default(env):
    assert env_str(NAME, "x") == "x"
    assert env_bool(NAME, True) is True
    assert env_int(NAME, 7) == 7
    assert env_list(NAME, ["a"]) == ["a"]
    assert env_url(NAME, "", schemes={"http"}) == ""


@pytest.mark.parametrize("value, expected", [("yes", True), ("ON", True), ("1", True), ("off", False), ("0", False)])
def test_booleans(env, value, expected):
    env(value)
    assert env_bool(NAME, not expected) is expected


@pytest.mark.parametrize("value", ["maybe", "2", "truee"])
def test_a_bad_boolean_is_refused(env, value):
    env(value)
    _refused(env_bool, False)


def test_integers_are_bounded(env):
    env(" 42 ")
    assert env_int(NAME, 0, minimum=1, maximum=100) == 42
    env("0")
    _refused(env_int, 5, minimum=1)
    env("101")
    _refused(env_int, 5, maximum=100)
    env("4.5")
    _refused(env_int, 5)


def test_lists_drop_blank_items(env):
    env(" a, ,b ,")
    assert env_list(NAME, []) == ["a", "b"]


def test_domains_are_lower_cased_without_the_root_dot(env):
    env("Mesh.Example.COM.")
    assert env_domain(NAME, "localhost") == "mesh.example.com"
    for bad in ("-bad.example", "exa mple.com", "a..b", "ex_ample.com", "é.example"):
        env(bad)
        _refused(env_domain, "localhost")


def test_origins_are_scheme_host_and_port_only(env):
    env("https://infrasim.example:8443/")
    assert env_origin(NAME, "http://localhost") == "https://infrasim.example:8443"
    for bad in ("ftp://example.com", "https://example.com/path", "https://example.com:99999", "example.com"):
        env(bad)
        _refused(env_origin, "http://localhost")


def test_urls_must_use_an_allowed_scheme(env):
    env("redis://127.0.0.1:6379/0")
    assert env_url(NAME, "", schemes={"redis"}) == "redis://127.0.0.1:6379/0"
    _refused(env_url, "", schemes={"http"})
    env("redis://127.0.0.1:notaport/0")
    _refused(env_url, "", schemes={"redis"})


@pytest.mark.parametrize(
    "value, expected",
    [("vpn.example.com:51820", ("vpn.example.com", 51820)), ("[fd00::1]:51820", ("[fd00::1]", 51820)), ("10.0.0.1:1", ("10.0.0.1", 1))],
)
def test_host_and_port(env, value, expected):
    env(value)
    assert env_host_port(NAME, "127.0.0.1:1") == expected


@pytest.mark.parametrize("value", ["vpn.example.com", "host:0", "host:65536", "[fd00::1:51820", "[nothex]:1", "bad_host:1"])
def test_a_bad_host_and_port_is_refused(env, value):
    env(value)
    _refused(env_host_port, "127.0.0.1:1")


def test_rates(env):
    env("signup=5/min, login=20/hour")
    assert env_rates(NAME) == {"signup": "5/min", "login": "20/hour"}
    for bad in ("signup", "signup=5", "signup=x/min", "signup=5/week", "=5/min"):
        env(bad)
        _refused(env_rates)
