"""OpenSSH public keys as people paste them, cleaned before they reach an
appliance's authorized_keys.

A key line is "type base64 [comment]". We refuse option prefixes
(`command=`, `from=`): they change what a key may do, and a pasted key
should only ever grant a plain login.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

SUPPORTED_TYPES = frozenset({
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
})
MIN_RSA_BITS = 2048
MAX_LINE_CHARS = 16 * 1024
MAX_KEYS = 32
MAX_COMMENT_CHARS = 100

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_LOOKS_LIKE_KEY_TYPE = re.compile(r"(ssh|ecdsa|sk)-[a-z0-9@.-]+")
# Characters a comment keeps: enough for "alice@laptop 2024-01-01", nothing
# that could look like another field or a different character.
_UNSAFE_COMMENT_CHARS = re.compile(r"[^A-Za-z0-9 @._+:/()=,-]")


def _embedded_type(blob: bytes) -> str:
    if len(blob) < 4:
        raise ValueError("not a public key: the key data is too short")
    (length,) = struct.unpack(">I", blob[:4])
    if length > len(blob) - 4:
        raise ValueError("not a public key: the key data is truncated")
    return blob[4 : 4 + length].decode("ascii", errors="replace")


def _check_key_data(key_type: str, blob: bytes) -> None:
    try:
        key = load_ssh_public_key(key_type.encode() + b" " + base64.b64encode(blob))
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"the key data is not a well-formed {key_type} key") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise ValueError(f"an RSA key needs at least {MIN_RSA_BITS} bits; this one has {key.key_size}")


def _clean_comment(words: list[str]) -> str:
    comment = _UNSAFE_COMMENT_CHARS.sub("", " ".join(words))
    return " ".join(comment.split())[:MAX_COMMENT_CHARS].strip()


def clean_authorized_key(line: str) -> str:
    """One key line, checked down to its key data, as "type base64 [comment]"."""
    if not isinstance(line, str):
        raise ValueError("not a public key: expected text")
    if len(line) > MAX_LINE_CHARS:
        raise ValueError(f"not a public key: longer than {MAX_LINE_CHARS} characters")
    line = line.strip()
    if not line:
        raise ValueError("not a public key: it is empty")
    if _CONTROL.search(line):
        raise ValueError("not a public key: one key per line, without control characters")
    words = line.split()
    key_type = words[0]
    if key_type not in SUPPORTED_TYPES:
        if any(word in SUPPORTED_TYPES for word in words[1:]):
            raise ValueError(
                "not a public key: options before the key type (such as command= or from=) are not allowed"
            )
        if _LOOKS_LIKE_KEY_TYPE.fullmatch(key_type):
            raise ValueError(f"unsupported key type {key_type}; use ssh-ed25519, ecdsa-sha2-nistp256 or ssh-rsa")
        raise ValueError("not a public key: it should start with its type, such as ssh-ed25519")
    if len(words) < 2:
        raise ValueError("not a public key: the key data after the type is missing")
    try:
        blob = base64.b64decode(words[1], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not a public key: the key data is not valid base64") from None
    if _embedded_type(blob) != key_type:
        raise ValueError(f"the key data does not match its type {key_type}")
    _check_key_data(key_type, blob)
    comment = _clean_comment(words[2:])
    normalized = f"{key_type} {base64.b64encode(blob).decode()}"
    return f"{normalized} {comment}" if comment else normalized


def clean_authorized_keys(value: list[str] | str) -> list[str]:
    """A list of key lines, or text with one key per line (blank lines and
    "#" comment lines skipped). Errors name the key by its 1-based position."""
    if isinstance(value, str):
        entries = [line for line in value.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    elif isinstance(value, list):
        entries = value
    else:
        raise ValueError("expected a list of public keys or text with one key per line")
    if len(entries) > MAX_KEYS:
        raise ValueError(f"at most {MAX_KEYS} keys")
    cleaned: list[str] = []
    seen: set[str] = set()
    for position, entry in enumerate(entries, start=1):
        try:
            key = clean_authorized_key(entry)
        except ValueError as error:
            raise ValueError(f"key {position}: {error}") from None
        identity = " ".join(key.split(" ")[:2])
        if identity not in seen:
            seen.add(identity)
            cleaned.append(key)
    return cleaned
