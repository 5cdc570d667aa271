"""The API's JSON parser measures nesting without recursion and reads no more
than the size limit."""

import io

import pytest
from rest_framework.exceptions import ParseError

from infrasim_site.parsers import BoundedJSONParser, RequestTooLarge, loads_bounded, nesting_depth


@pytest.mark.parametrize(
    "text, depth",
    [
        ("1", 0),
        ('"[[["', 0),
        ("[]", 1),
        ("[[]][[[]]]", 3),
        ('{"a": [1, {"b": "]]]["}]}', 3),
        (r'["a\"[[", [1]]', 2),
        (r'["\\", [[1]]]', 3),
        ("[" * 100_000, 100_000),
    ],
)
def test_nesting_depth_counts_only_structure(text, depth):
    assert nesting_depth(text) == depth


def test_nesting_at_the_limit_decodes_and_one_deeper_does_not():
    assert loads_bounded("[" * 64 + "]" * 64, max_depth=64) is not None
    with pytest.raises(ValueError, match="nested deeper than 64"):
        loads_bounded("[" * 65 + "]" * 65, max_depth=64)


def test_a_million_brackets_are_refused_without_recursion():
    with pytest.raises(ValueError):
        loads_bounded("[" * 1_000_000)


def test_nan_and_infinity_are_not_json():
    with pytest.raises(ValueError):
        loads_bounded('{"a": NaN}')
    with pytest.raises(ValueError):
        loads_bounded("[Infinity]")


def _parse(body: bytes, **context):
    return BoundedJSONParser().parse(io.BytesIO(body), "application/json", context)


def test_the_parser_returns_the_decoded_body():
    assert _parse('{"name": "Lab ✓"}'.encode()) == {"name": "Lab ✓"}


def test_a_body_over_the_limit_is_refused_without_reading_it_all(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    stream = io.BytesIO(b"[" + b"0," * 5000 + b"0]")
    with pytest.raises(RequestTooLarge) as refused:
        BoundedJSONParser().parse(stream, "application/json", {})
    assert refused.value.status_code == 413
    assert stream.tell() == 1001


@pytest.mark.parametrize(
    "body, context",
    [
        (b"[" * 65 + b"]" * 65, {}),
        (b'{"a": 1', {}),
        (b'"\xff"', {}),
        (b"[1]", {"encoding": "no-such-codec"}),
    ],
)
def test_bad_bodies_are_parse_errors(body, context):
    with pytest.raises(ParseError):
        _parse(body, **context)
