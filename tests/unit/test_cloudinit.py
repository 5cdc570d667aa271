"""Appliance user-data: the user's cloud-config checked against cloud-init's
own schema, merged under ours, rendered as a document cloud-init reads."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from django.core.exceptions import ImproperlyConfigured

from appliances import cloudinit
from appliances.cloudinit import (
    CloudConfigInvalid,
    build_meta_data,
    build_user_data,
    hostname_for,
    parse_cloud_config,
    validate,
)

WG0_CONF = "[Interface]\nPrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\nAddress = 10.80.0.7/32\n"
PHONE_HOME = "https://infrasim.example/api/appliances/phone-home/6f1c/"


@pytest.fixture(scope="module")
def ssh_key(tmp_path_factory) -> str:
    private = tmp_path_factory.mktemp("ssh-key") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice@laptop", "-f", str(private)], check=True)
    return private.with_suffix(".pub").read_text().strip()


def render(ssh_key: str, user_config: dict | None = None, wg0_conf: str | None = WG0_CONF) -> dict:
    """build_user_data's document, read back the way cloud-init reads it."""
    text = build_user_data(
        hostname="web-1",
        ssh_authorized_keys=[ssh_key],
        wg0_conf=wg0_conf,
        phone_home_url=PHONE_HOME,
        user_config=user_config,
    )
    assert text.startswith("#cloud-config\n")
    return yaml.safe_load(text)


def problems_of(text: str) -> list[str]:
    with pytest.raises(CloudConfigInvalid) as invalid:
        parse_cloud_config(text)
    return invalid.value.problems


def test_a_schema_error_names_its_path():
    with pytest.raises(CloudConfigInvalid) as invalid:
        validate({"hostname": 12})
    assert invalid.value.problems == ["hostname: 12 is not of type 'string'"]


def test_all_schema_errors_are_reported_sorted_by_path():
    assert problems_of("#cloud-config\nruncmd: [ls, 12]\nhostname: 12\nwrite_files: [{path: /x, permissions: 600}]\n") == [
        "hostname: 12 is not of type 'string'",
        "runcmd.1: 12 is not of type 'array', 'string', 'null'",
        "write_files.0.permissions: 600 is not of type 'string'",
    ]


def test_a_value_of_the_right_shape_reports_its_own_error_not_the_alternatives():
    assert problems_of("#cloud-config\nusers: [default, {name: bob, shel: /bin/sh}]\n") == [
        "users.1: Additional properties are not allowed ('shel' was unexpected)"
    ]
    assert problems_of("#cloud-config\nusers: [{name: bob, groups: 5}]\n") == [
        "users.0.groups: 5 is not of type 'string', 'array', 'object'"
    ]


def test_bad_yaml_names_the_line():
    assert problems_of("#cloud-config\nhostname: web\npackages: nginx: true\n") == [
        "line 3: mapping values are not allowed here"
    ]


def test_a_second_document_is_refused():
    assert problems_of("#cloud-config\nhostname: a\n---\nhostname: b\n") == [
        "line 3: but found another document (expected a single document in the stream)"
    ]


@pytest.mark.parametrize("text, kind", [("#cloud-config\n- apt update\n", "list"), ("#cloud-config\njust text\n", "str")])
def test_a_cloud_config_must_be_a_mapping(text, kind):
    assert problems_of(text) == [f"top level: a cloud-config is a mapping of keys to values, not a {kind}"]


@pytest.mark.parametrize("text", ["hostname: web\n", "#!/bin/sh\necho hi\n", "\n#cloud-config\n", "#cloud-configx\n"])
def test_the_cloud_config_header_is_required(text):
    assert problems_of(text) == ["line 1: a cloud-config starts with the line #cloud-config"]


def test_an_empty_cloud_config_is_an_empty_mapping():
    assert parse_cloud_config("#cloud-config\n") == {}
    assert parse_cloud_config("#cloud-config\r\npackages: [htop]\r\n") == {"packages": ["htop"]}


def test_more_than_64_kib_is_refused():
    assert problems_of("#cloud-config\n" + "#" * 64 * 1024) == ["cloud-config: larger than 64 KiB"]


def test_deep_nesting_is_refused():
    assert problems_of("#cloud-config\nbootcmd: " + "[" * 40 + "]" * 40 + "\n") == ["line 2: nested deeper than 32 levels"]


def test_a_self_referencing_alias_is_refused():
    assert problems_of("#cloud-config\nruncmd: &loop [*loop]\n") == ["line 2: nested deeper than 32 levels"]


def test_aliases_that_expand_exponentially_are_refused():
    text = "#cloud-config\na: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for name, previous in zip("bcdef", "abcde"):
        text += f"{name}: &{name} [{', '.join([f'*{previous}'] * 10)}]\n"
    assert problems_of(text) == ["the document expands to more than 20000 values"]


def test_keys_infrasim_sets_are_refused_by_name():
    assert problems_of(
        "#cloud-config\nphone_home: {url: 'https://evil.example/'}\n"
        "write_files:\n- {path: /etc/motd, content: hi}\n- {path: /etc/wireguard//wg0.conf, content: x}\n"
    ) == [
        "phone_home: set by InfraSim, it cannot be set here",
        "write_files.1.path: /etc/wireguard/wg0.conf is written by InfraSim, it cannot be set here",
    ]


@pytest.mark.parametrize("users", ["bob", "{bob: true}"])
def test_users_must_be_a_list_so_the_default_user_keeps_the_keys(users):
    assert problems_of(f"#cloud-config\nusers: {users}\n") == [
        "users: use the list form (users: [...]) so that the default user stays"
    ]


def test_a_character_yaml_forbids_names_its_line():
    assert problems_of("#cloud-config\nhostname: a\nruncmd: [\"\ud800\"]\n") == [
        "line 3: character #xd800 is not allowed in YAML"
    ]


def test_a_key_that_yaml_reads_as_a_number_must_be_quoted():
    assert problems_of("#cloud-config\napt:\n  sources:\n    2024: {source: 'deb http://x/ stable main'}\n") == [
        "line 4: a key must be text; quote it"
    ]


def test_a_valid_cloud_config_is_returned_as_a_mapping():
    assert parse_cloud_config("#cloud-config\npackages: [nginx]\nruncmd:\n  - [systemctl, start, nginx]\n") == {
        "packages": ["nginx"],
        "runcmd": [["systemctl", "start", "nginx"]],
    }


def test_rendered_user_data_round_trips_and_validates(ssh_key):
    config = render(ssh_key)
    validate(config)
    assert config == {
        "hostname": "web-1",
        "preserve_hostname": False,
        "manage_etc_hosts": True,
        "users": ["default"],
        "ssh_authorized_keys": [ssh_key],
        "ssh_pwauth": False,
        "write_files": [
            {"path": "/etc/wireguard/wg0.conf", "content": WG0_CONF, "owner": "root:root", "permissions": "0600"}
        ],
        "runcmd": [["systemctl", "enable", "wg-quick@wg0"], ["systemctl", "restart", "wg-quick@wg0"]],
        "phone_home": {"url": PHONE_HOME, "post": ["instance_id", "hostname"], "tries": 20},
    }


def test_wg0_conf_lands_readable_by_root_only(ssh_key):
    (entry,) = [item for item in render(ssh_key)["write_files"] if item["path"] == "/etc/wireguard/wg0.conf"]
    # cloud-init reads permissions as an octal string.
    assert int(entry["permissions"], 8) == 0o600
    assert entry["owner"] == "root:root"
    assert entry["content"] == WG0_CONF


def test_without_wireguard_there_is_no_wg0_file_or_unit(ssh_key):
    config = render(ssh_key, wg0_conf=None)
    assert "write_files" not in config and "runcmd" not in config
    validate(config)


def test_the_users_lists_follow_ours_and_their_other_values_win(ssh_key):
    user_config = parse_cloud_config(
        "#cloud-config\n"
        "hostname: renamed\n"
        "ssh_pwauth: true\n"
        "packages: [nginx]\n"
        "users: [{name: bob, shell: /bin/bash}]\n"
        "ssh_authorized_keys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBobBobBobBobBobBobBobBobBobBobBobBobBobBobBob bob']\n"
        "runcmd: [[systemctl, start, nginx]]\n"
        "write_files: [{path: /etc/motd, content: hello}]\n"
    )
    config = render(ssh_key, user_config)
    assert config["runcmd"] == [["systemctl", "enable", "wg-quick@wg0"], ["systemctl", "restart", "wg-quick@wg0"],
                                ["systemctl", "start", "nginx"]]
    assert [item["path"] for item in config["write_files"]] == ["/etc/wireguard/wg0.conf", "/etc/motd"]
    assert config["ssh_authorized_keys"][0] == ssh_key and len(config["ssh_authorized_keys"]) == 2
    assert config["users"] == ["default", {"name": "bob", "shell": "/bin/bash"}]
    assert config["packages"] == ["nginx"]
    assert config["hostname"] == "renamed" and config["ssh_pwauth"] is True
    assert config["phone_home"]["url"] == PHONE_HOME


def test_owned_keys_passed_straight_to_the_builder_are_refused(ssh_key):
    with pytest.raises(CloudConfigInvalid) as invalid:
        render(ssh_key, {"phone_home": {"url": "https://evil.example/"}})
    assert invalid.value.problems == ["phone_home: set by InfraSim, it cannot be set here"]


def test_the_merged_result_is_validated(ssh_key):
    with pytest.raises(CloudConfigInvalid) as invalid:
        render(ssh_key, {"runcmd": "reboot"})
    assert invalid.value.problems == ["runcmd: 'reboot' is not of type 'array'"]


def test_the_builder_refuses_a_bad_key_or_hostname(ssh_key):
    with pytest.raises(ValueError, match="key 1: not a public key"):
        build_user_data(hostname="web-1", ssh_authorized_keys=["junk"], wg0_conf=None, phone_home_url=PHONE_HOME)
    with pytest.raises(ValueError, match="not a host label"):
        build_user_data(hostname="Web_1", ssh_authorized_keys=[ssh_key], wg0_conf=None, phone_home_url=PHONE_HOME)


def test_multi_line_values_render_as_literal_blocks(ssh_key):
    text = build_user_data(hostname="web-1", ssh_authorized_keys=[ssh_key], wg0_conf=WG0_CONF, phone_home_url=PHONE_HOME)
    assert "  content: |\n    [Interface]\n    PrivateKey = " in text
    assert f"- {ssh_key}\n" in text


def test_meta_data_names_the_instance_and_host():
    assert yaml.safe_load(build_meta_data(instance_id="i-6f1c", hostname="web-1")) == {
        "instance-id": "i-6f1c",
        "local-hostname": "web-1",
    }


@pytest.mark.parametrize(
    "name, label",
    [
        ("web-1", "web-1"),
        ("Café Server #2", "cafe-server-2"),
        ("  --Lab__Box--  ", "lab-box"),
        ("研究室", "appliance"),
        ("", "appliance"),
        ("a" * 70, "a" * 63),
        ("a" * 62 + "-b", "a" * 62),
    ],
)
def test_hostname_for_makes_an_rfc_1123_label(name, label):
    assert hostname_for(name) == label


def test_a_missing_schema_says_how_to_install_it(settings, tmp_path):
    settings.CLOUD_INIT_SCHEMA = tmp_path / "schema-cloud-config-v1.json"
    with pytest.raises(ImproperlyConfigured, match="make install"):
        validate({})


def test_redacting_secrets_leaves_out_credentials_and_says_which():
    config = {
        "packages": ["htop"],
        "password": "hunter2",
        "chpasswd": {"users": [{"name": "debian", "password": "x"}]},
        "ssh_keys": {"ed25519_private": "-----BEGIN OPENSSH PRIVATE KEY-----"},
        "users": [{"name": "ops", "passwd": "$6$hash", "groups": "sudo"}, "default"],
        "write_files": [
            {"path": "/etc/motd", "content": "hi"},
            {"path": "/root/token", "content": "s3cr3t", "permissions": "0600"},
            {"path": "/etc/app.conf", "content": "x", "permissions": "0644"},
        ],
    }
    kept, redacted = cloudinit.redact_secrets(config)
    assert kept == {
        "packages": ["htop"],
        "users": [{"name": "ops", "groups": "sudo"}, "default"],
        "write_files": [{"path": "/etc/motd", "content": "hi"},
                        {"path": "/etc/app.conf", "content": "x", "permissions": "0644"}],
    }
    assert redacted == ["password", "chpasswd", "ssh_keys", "users[0].passwd", "write_files[1] (/root/token)"]
    assert config["password"] == "hunter2", "the owner's config itself is not changed"


def test_user_data_without_a_phone_home_url_has_no_phone_home():
    text = cloudinit.build_user_data(hostname="web", ssh_authorized_keys=[], wg0_conf=None, phone_home_url=None)
    assert "phone_home" not in yaml.safe_load(text)
