"""The API's JSON parser: bounded in size and nesting depth.

The json module decodes nested arrays and objects by recursion, so a body of a
few thousand `[` raises RecursionError (a 500 with a traceback) before any
serializer sees it. The depth is measured here first, without recursion, and
the body is read only up to the size limit, so anything malformed, too large
or too deep is a 400/413 in DRF's JSON error shape.
"""

from __future__ import annotations

import re
from itertools import accumulate, count
from operator import sub

from django.conf import settings
from rest_framework import exceptions, status
from rest_framework.parsers import JSONParser
from rest_framework.utils import json

MAX_DEPTH = 64

# A JSON string: the decoder reads exactly these spans as strings, so brackets
# inside them are text, not structure.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
# An opening bracket counts 2 and a closing one 0 (bytes are unsigned), so the
# running sum minus the position is the number of brackets still open.
_STEP = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")


class RequestTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body too large."
    default_code = "request_too_large"


def nesting_depth(text: str) -> int:
    """How deeply arrays and objects nest in `text`, computed in one pass of
    C-level iteration (no recursion, no per-character Python loop)."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text)).encode("ascii").translate(_STEP)
    if not brackets:
        return 0
    return max(map(sub, accumulate(brackets), count(1)))


def loads_bounded(text: str, *, max_depth: int = MAX_DEPTH, strict: bool = True):
    """json.loads that raises ValueError, never RecursionError, on input
    nested deeper than max_depth; strict refuses NaN and Infinity."""
    if nesting_depth(text) > max_depth:
        raise ValueError(f"nested deeper than {max_depth} levels")
    return json.loads(text, parse_constant=json.strict_constant if strict else None)


class BoundedJSONParser(JSONParser):
    max_depth = MAX_DEPTH

    def parse(self, stream, media_type=None, parser_context=None):
        parser_context = parser_context or {}
        encoding = parser_context.get("encoding", settings.DEFAULT_CHARSET)
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if stream is None:
            raw = b""
        else:
            raw = stream.read() if limit is None else stream.read(limit + 1)
        if limit is not None and len(raw) > limit:
            raise RequestTooLarge(f"Request body too large: the limit is {limit} bytes.")
        try:
            text = raw.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            raise exceptions.ParseError(f"JSON parse error - the body is not valid {encoding}.") from None
        try:
            return loads_bounded(text, max_depth=self.max_depth, strict=self.strict)
        except ValueError as exc:
            raise exceptions.ParseError(f"JSON parse error - {exc}") from None
