"""Resolving a catalog image's digest from its publisher's checksum list.

Catalog entries that pin no digest name the publisher's list (Debian's
SHA512SUMS, Ubuntu's SHA256SUMS, Alpine's .sha512 file); the digest is read
from it over HTTPS right before the download and then verified as usual.
"""

from __future__ import annotations

import re
import urllib.request
from urllib.parse import urlsplit

from appliances.images import ImageError

HEX_LENGTH = {"sha256": 64, "sha512": 128}
MAX_LIST_BYTES = 1024 * 1024


def digest_from_list(text: str, filename: str, *, algorithm: str) -> str:
    """The digest for `filename` in a checksum list: GNU style
    (`<hex>  <name>` or `<hex> *<name>`), BSD style
    (`SHA512 (<name>) = <hex>`), or a list with a single bare digest."""
    length = HEX_LENGTH[algorithm]
    bare = []
    for line in text.splitlines():
        line = line.strip()
        gnu = re.fullmatch(rf"([0-9a-fA-F]{{{length}}})\s+\*?(\S+)", line)
        if gnu and gnu.group(2).rsplit("/", 1)[-1] == filename:
            return gnu.group(1).lower()
        bsd = re.fullmatch(rf"\w+\s*\((.+)\)\s*=\s*([0-9a-fA-F]{{{length}}})", line)
        if bsd and bsd.group(1).rsplit("/", 1)[-1] == filename:
            return bsd.group(2).lower()
        if re.fullmatch(rf"[0-9a-fA-F]{{{length}}}", line):
            bare.append(line.lower())
    if len(bare) == 1:
        return bare[0]
    raise ImageError(f"the publisher's checksum list has no {algorithm} digest for {filename}")


def published_checksum(checksum_url: str, source_url: str, *, algorithm: str, timeout: float = 30) -> str:
    if not checksum_url:
        raise ImageError("this template pins no checksum and names no checksum list")
    filename = urlsplit(source_url).path.rsplit("/", 1)[-1]
    try:
        with urllib.request.urlopen(checksum_url, timeout=timeout) as response:  # noqa: S310 (operator's catalog URL)
            text = response.read(MAX_LIST_BYTES + 1)
    except OSError as exc:
        raise ImageError(f"could not read the checksum list {checksum_url}: {exc}") from exc
    if len(text) > MAX_LIST_BYTES:
        raise ImageError(f"the checksum list {checksum_url} is larger than 1 MiB")
    return digest_from_list(text.decode("utf-8", "replace"), filename, algorithm=algorithm)
