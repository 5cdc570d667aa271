"""The one handle validator, shared by the API, the console and the admin.

A handle becomes a DNS label (RFC 1035/1123), a Matrix localpart and part of
an S3 bucket name, so it obeys the overlap of the three: 3 to 32 characters of
a-z, 0-9 and '-', starting with a letter, ending with a letter or digit, with
no '--' (which S3 and IDNA reserve, e.g. 'xn--').
"""

from __future__ import annotations

import re
import unicodedata

from django.core.exceptions import ValidationError

MIN_LENGTH = 3
MAX_LENGTH = 32

RESERVED = frozenset(
    """
    www mail email smtp imap pop pop3 mx ns ns1 ns2 ns3 ns4 dns autodiscover autoconfig
    matrix synapse element admin administrator root sysadmin operator operators staff
    api auth login logout signin signup register account accounts console dashboard
    static media assets cdn ws wss webmail ftp sftp ssh vpn wg wireguard gateway mesh
    s3 bucket storage minio support help abuse postmaster hostmaster webmaster security
    noreply no-reply status billing infrasim system localhost test example invalid
    """.split()
)

_ALLOWED = re.compile(r"[a-z0-9-]+")

# The part of Unicode's confusables (UTS #39) that can survive the charset
# rule: after NFKC and lower-casing only ASCII is left, so the skeleton needs
# only the ASCII look-alikes. 'i' stands for 'I', which lower-casing folded
# before we got here (confusables maps I, 1 and | to l).
_CONFUSABLE_LETTERS = str.maketrans({"0": "o", "1": "l", "i": "l"})
_CONFUSABLE_SEQUENCES = (("rn", "m"), ("vv", "w"), ("cl", "d"))


def normalize(raw: str) -> str:
    return unicodedata.normalize("NFKC", raw).strip().lower()


def skeleton(handle: str) -> str:
    """Two handles with one skeleton look alike; only one of them may exist."""
    text = handle.translate(_CONFUSABLE_LETTERS)
    for sequence, prototype in _CONFUSABLE_SEQUENCES:
        text = text.replace(sequence, prototype)
    return text


_RESERVED_SKELETONS = {skeleton(word): word for word in RESERVED}


def validate_handle(raw: str) -> str:
    """Return the normalised handle, or raise ValidationError whose code names
    the broken rule (and whose message says it in words)."""
    if not isinstance(raw, str):
        raise ValidationError("A handle must be a string.", code="invalid_type")
    handle = normalize(raw)
    if len(handle) < MIN_LENGTH:
        raise ValidationError(f"A handle needs at least {MIN_LENGTH} characters.", code="too_short")
    if len(handle) > MAX_LENGTH:
        raise ValidationError(f"A handle has at most {MAX_LENGTH} characters.", code="too_long")
    if not _ALLOWED.fullmatch(handle):
        raise ValidationError(
            "A handle may contain only the letters a-z, digits 0-9 and '-'.", code="invalid_characters"
        )
    if not handle[0].isalpha():
        raise ValidationError("A handle must start with a letter.", code="must_start_with_letter")
    if handle[-1] == "-":
        raise ValidationError("A handle must end with a letter or a digit.", code="must_end_alphanumeric")
    if "--" in handle:
        raise ValidationError("A handle may not contain '--'.", code="double_hyphen")
    if handle in RESERVED:
        raise ValidationError(f"'{handle}' is reserved.", code="reserved")
    look_alike = _RESERVED_SKELETONS.get(skeleton(handle))
    if look_alike:
        raise ValidationError(f"'{handle}' looks like the reserved name '{look_alike}'.", code="confusable_reserved")
    return handle
