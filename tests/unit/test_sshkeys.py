"""Public keys pasted by people, checked down to the key data."""

from __future__ import annotations

import base64
import struct
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from appliances.sshkeys import MAX_KEYS, clean_authorized_key, clean_authorized_keys

KEYGEN_ARGUMENTS = {
    "ed25519": ["-t", "ed25519"],
    "rsa2048": ["-t", "rsa", "-b", "2048"],
    "rsa1024": ["-t", "rsa", "-b", "1024"],
    "ecdsa256": ["-t", "ecdsa", "-b", "256"],
    "ecdsa384": ["-t", "ecdsa", "-b", "384"],
    "ecdsa521": ["-t", "ecdsa", "-b", "521"],
}


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, str]:
    """Public key lines made by ssh-keygen, by kind."""
    directory = tmp_path_factory.mktemp("ssh-keys")
    lines = {}
    for kind, arguments in KEYGEN_ARGUMENTS.items():
        private = directory / kind
        subprocess.run(["ssh-keygen", "-q", *arguments, "-N", "", "-C", f"alice@{kind}", "-f", str(private)], check=True)
        lines[kind] = private.with_suffix(".pub").read_text()
    return lines


def ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def blob_of(line: str) -> bytes:
    return base64.b64decode(line.split()[1])


def line_of(key_type: str, blob: bytes) -> str:
    return f"{key_type} {base64.b64encode(blob).decode()}"


@pytest.mark.parametrize("kind", ["ed25519", "rsa2048", "ecdsa256", "ecdsa384", "ecdsa521"])
def test_keys_from_ssh_keygen_are_accepted_as_written(keys, kind):
    assert clean_authorized_key(keys[kind]) == keys[kind].strip()


def test_security_key_types_are_accepted():
    ed = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    sk_ed = b"".join(ssh_string(part) for part in (b"sk-ssh-ed25519@openssh.com", ed, b"ssh:"))
    point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    sk_ecdsa = b"".join(
        ssh_string(part) for part in (b"sk-ecdsa-sha2-nistp256@openssh.com", b"nistp256", point, b"ssh:")
    )
    for key_type, blob in [("sk-ssh-ed25519@openssh.com", sk_ed), ("sk-ecdsa-sha2-nistp256@openssh.com", sk_ecdsa)]:
        assert clean_authorized_key(line_of(key_type, blob) + " yubikey") == line_of(key_type, blob) + " yubikey"


def test_surrounding_whitespace_and_extra_spaces_are_normalized(keys):
    key_type, data, comment = keys["ed25519"].split()
    assert clean_authorized_key(f"  {key_type}   {data}   {comment}  \n") == f"{key_type} {data} {comment}"


def test_a_key_without_comment_stays_without_one(keys):
    bare = " ".join(keys["ed25519"].split()[:2])
    assert clean_authorized_key(bare) == bare


def test_a_comment_keeps_only_safe_characters(keys):
    bare = " ".join(keys["ed25519"].split()[:2])
    assert clean_authorized_key(f"{bare} alice@laptop <b>ок</b> \u202e2024") == f"{bare} alice@laptop b/b 2024"
    assert clean_authorized_key(f"{bare} ☃☃") == bare


def test_a_truncated_blob_is_refused(keys):
    blob = blob_of(keys["ed25519"])
    with pytest.raises(ValueError, match="the key data is not a well-formed ssh-ed25519 key"):
        clean_authorized_key(line_of("ssh-ed25519", blob[:-8]))


def test_a_blob_cut_inside_its_type_string_is_refused(keys):
    with pytest.raises(ValueError, match="not a public key: the key data is truncated"):
        clean_authorized_key(line_of("ssh-ed25519", blob_of(keys["ed25519"])[:8]))


def test_trailing_bytes_after_the_key_are_refused(keys):
    blob = blob_of(keys["ecdsa256"]) + b"\x00\x00\x00\x01x"
    with pytest.raises(ValueError, match="not a well-formed ecdsa-sha2-nistp256 key"):
        clean_authorized_key(line_of("ecdsa-sha2-nistp256", blob))


def test_an_ecdsa_point_off_the_curve_is_refused(keys):
    blob = bytearray(blob_of(keys["ecdsa256"]))
    blob[-1] ^= 1
    with pytest.raises(ValueError, match="not a well-formed ecdsa-sha2-nistp256 key"):
        clean_authorized_key(line_of("ecdsa-sha2-nistp256", bytes(blob)))


def test_truncated_base64_is_refused(keys):
    key_type, data = keys["ed25519"].split()[:2]
    with pytest.raises(ValueError, match="not a public key: the key data is not valid base64"):
        clean_authorized_key(f"{key_type} {data[:-3]}")


def test_a_declared_type_that_differs_from_the_blob_is_refused(keys):
    data = keys["ed25519"].split()[1]
    with pytest.raises(ValueError, match="the key data does not match its type ssh-rsa"):
        clean_authorized_key(f"ssh-rsa {data}")
    with pytest.raises(ValueError, match="the key data does not match its type ecdsa-sha2-nistp384"):
        clean_authorized_key(f"ecdsa-sha2-nistp384 {keys['ecdsa256'].split()[1]}")


def test_rsa_below_2048_bits_is_refused(keys):
    with pytest.raises(ValueError, match="an RSA key needs at least 2048 bits; this one has 1024"):
        clean_authorized_key(keys["rsa1024"])


@pytest.mark.parametrize("junk", ["hello world", "AAAAC3NzaC1lZDI1NTE5", "-----BEGIN OPENSSH PRIVATE KEY-----"])
def test_junk_is_not_a_public_key(junk):
    with pytest.raises(ValueError, match="not a public key: it should start with its type"):
        clean_authorized_key(junk)


@pytest.mark.parametrize("options", ['command="/bin/sh -c id"', 'from="10.0.0.1",no-pty', "no-agent-forwarding"])
def test_an_options_prefix_is_refused(keys, options):
    with pytest.raises(ValueError, match="options before the key type"):
        clean_authorized_key(f"{options} {keys['ed25519']}")


@pytest.mark.parametrize("key_type", ["ssh-dss", "ssh-ed25519-cert-v01@openssh.com", "ecdsa-sha2-nistp192"])
def test_other_key_types_are_unsupported(key_type):
    with pytest.raises(ValueError, match=f"unsupported key type {key_type}"):
        clean_authorized_key(f"{key_type} AAAAB3NzaC1kc3MAAACBAP")


def test_a_second_line_smuggled_into_one_key_is_refused(keys):
    with pytest.raises(ValueError, match="without control characters"):
        clean_authorized_key(keys["ed25519"].strip() + "\n" + keys["rsa2048"])
    with pytest.raises(ValueError, match="without control characters"):
        clean_authorized_key(keys["ed25519"].strip() + "\rcommand=x")


def test_an_overlong_line_is_refused(keys):
    with pytest.raises(ValueError, match="longer than 16384 characters"):
        clean_authorized_key(keys["ed25519"].strip() + " " + "a" * 16 * 1024)


def test_the_key_data_is_required():
    with pytest.raises(ValueError, match="the key data after the type is missing"):
        clean_authorized_key("ssh-ed25519")
    with pytest.raises(ValueError, match="it is empty"):
        clean_authorized_key("   ")


def test_text_with_one_key_per_line_skips_blank_and_comment_lines(keys):
    text = f"# laptop\n{keys['ed25519']}\n\n{keys['ecdsa256']}"
    assert clean_authorized_keys(text) == [keys["ed25519"].strip(), keys["ecdsa256"].strip()]


def test_duplicates_are_removed_keeping_the_first(keys):
    bare = " ".join(keys["ed25519"].split()[:2])
    assert clean_authorized_keys([keys["ed25519"], keys["rsa2048"], f"{bare} other-comment"]) == [
        keys["ed25519"].strip(),
        keys["rsa2048"].strip(),
    ]


def test_an_error_names_the_key_by_position(keys):
    with pytest.raises(ValueError, match="^key 2: an RSA key needs at least 2048 bits"):
        clean_authorized_keys([keys["ed25519"], keys["rsa1024"]])
    with pytest.raises(ValueError, match="^key 1: not a public key: expected text"):
        clean_authorized_keys([42])


def test_at_most_32_keys(keys):
    assert len(clean_authorized_keys([keys["ed25519"]] * MAX_KEYS)) == 1
    with pytest.raises(ValueError, match="at most 32 keys"):
        clean_authorized_keys([keys["ed25519"]] * (MAX_KEYS + 1))


def test_something_other_than_a_list_or_text_is_refused():
    with pytest.raises(ValueError, match="a list of public keys or text"):
        clean_authorized_keys({"key": "ssh-ed25519 AAAA"})
