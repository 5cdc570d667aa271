"""Sealing secrets at rest with libsodium's SecretBox.

The master key comes from INFRASIM_MASTER_KEY (base64 of 32 bytes) or from a
key file (INFRASIM_MASTER_KEY_FILE) that must be private to its owner. For the
embedded `make run` set-up a key file is created once under var/ with mode 0600.
"""

from __future__ import annotations

import base64
import os
import stat
from functools import lru_cache
from pathlib import Path

import nacl.exceptions
import nacl.secret
import nacl.utils
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

_PREFIX = "sb1:"


class UnsealError(Exception):
    """A sealed value was tampered with or sealed under another master key."""


def load_master_key(*, inline: str, key_file: Path, create: bool) -> bytes:
    if inline:
        try:
            key = base64.b64decode(inline, validate=True)
        except ValueError:
            raise ImproperlyConfigured("INFRASIM_MASTER_KEY: not valid base64") from None
        if len(key) != nacl.secret.SecretBox.KEY_SIZE:
            raise ImproperlyConfigured("INFRASIM_MASTER_KEY: must decode to exactly 32 bytes")
        return key
    if not key_file.exists():
        if not create:
            raise ImproperlyConfigured(f"INFRASIM_MASTER_KEY_FILE: {key_file} does not exist")
        key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(base64.b64encode(nacl.utils.random(nacl.secret.SecretBox.KEY_SIZE)))
    mode = stat.S_IMODE(key_file.stat().st_mode)
    if mode & 0o077:
        raise ImproperlyConfigured(
            f"INFRASIM_MASTER_KEY_FILE: {key_file} is readable by others (mode {mode:o}); chmod 600 it"
        )
    return load_master_key(inline=key_file.read_text().strip(), key_file=key_file, create=False)


@lru_cache(maxsize=1)
def _box() -> nacl.secret.SecretBox:
    return nacl.secret.SecretBox(settings.INFRASIM_MASTER_KEY)


def seal(plaintext: bytes) -> str:
    return _PREFIX + base64.b64encode(_box().encrypt(plaintext)).decode("ascii")


def unseal(sealed: str) -> bytes:
    if not sealed.startswith(_PREFIX):
        raise UnsealError("not a sealed value")
    try:
        return _box().decrypt(base64.b64decode(sealed[len(_PREFIX):]))
    except (nacl.exceptions.CryptoError, ValueError) as exc:
        raise UnsealError("cannot unseal: wrong master key or tampered value") from exc
