"""The one cleaner for human-readable names (display names, passkey, token,
peer, appliance names...): whitespace collapsed, length bounded, and no
character that could make a name look like something else or break the file
it is written into (WireGuard .conf comments, Terraform, archives)."""

from __future__ import annotations

import unicodedata

from infrasim_site.errors import InvalidInput

# Bidirectional overrides and isolates (the "Trojan Source" characters), and
# the zero-width and invisible formatting characters. All are category Cf;
# every Cf character is refused, these are named for the error message.
_BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")


def _is_noncharacter(code: int) -> bool:
    return 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE


def _refusal(ch: str) -> str | None:
    category = unicodedata.category(ch)
    if ch in _BIDI:
        return "Text-direction control characters are not allowed."
    if category == "Cf":
        return "Invisible formatting characters (such as zero-width spaces) are not allowed."
    if category in ("Cc", "Zl", "Zp"):
        return "Control characters are not allowed."
    if category == "Co":
        return "Private-use characters are not allowed."
    if category == "Cs" or _is_noncharacter(ord(ch)):
        return "Unicode non-characters are not allowed."
    if category == "Cn":
        return "Unassigned characters are not allowed."
    return None


def clean_name(value, *, field: str, max_length: int, required: bool = True) -> str:
    """Return the cleaned name or raise InvalidInput naming `field`."""
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise InvalidInput("Must be a string.", field=field, code="invalid_type")
    for ch in value:
        # Tabs and line breaks are only collapsed into spaces below.
        refusal = None if ch in " \t\n\r" else _refusal(ch)
        if refusal:
            raise InvalidInput(refusal, field=field, code="invalid_characters")
    value = " ".join(value.split())
    if required and not value:
        raise InvalidInput("This field is required.", field=field, code="required")
    if len(value) > max_length:
        raise InvalidInput(f"At most {max_length} characters.", field=field, code="too_long")
    return value
