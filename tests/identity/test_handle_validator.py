import re
import string

import pytest
from django.core.exceptions import ValidationError
from hypothesis import assume, given
from hypothesis import strategies as st

from identity.handles import RESERVED, normalize, skeleton, validate_handle

VALID = re.compile(r"^[a-z](?:[a-z0-9]|-(?!-)){1,30}[a-z0-9]$")
LABEL_CHARS = string.ascii_lowercase + string.digits + "-"


def rule_broken(raw: str) -> str | None:
    try:
        validate_handle(raw)
    except ValidationError as exc:
        return exc.code
    return None


@pytest.mark.parametrize(
    "raw, code",
    [
        ("ab", "too_short"),
        ("a" * 33, "too_long"),
        ("1abc", "must_start_with_letter"),
        ("-abc", "must_start_with_letter"),
        ("abc-", "must_end_alphanumeric"),
        ("ab--cd", "double_hyphen"),
        ("xn--abc", "double_hyphen"),
        ("ab_cd", "invalid_characters"),
        ("ab.cd", "invalid_characters"),
        ("ab cd", "invalid_characters"),
        ("аlice", "invalid_characters"),  # Cyrillic а survives NFKC and is refused
        ("admin", "reserved"),
        ("Matrix", "reserved"),
        ("adrnin", "confusable_reserved"),
        ("rnail", "confusable_reserved"),
        ("w1", "too_short"),
        ("wvvw", "confusable_reserved"),
        ("adm1n", "confusable_reserved"),
    ],
)
def test_each_broken_rule_is_named(raw, code):
    assert rule_broken(raw) == code


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("alice", "alice"),
        ("Alice", "alice"),
        ("  bob-42 ", "bob-42"),
        ("ｃａｒｏｌ", "carol"),  # full-width letters fold under NFKC
        ("a1b", "a1b"),
        ("a" * 32, "a" * 32),
    ],
)
def test_valid_handles_come_back_normalised(raw, expected):
    assert validate_handle(raw) == expected


@given(st.text(alphabet=LABEL_CHARS, min_size=0, max_size=40))
def test_accepted_handles_are_dns_labels_matrix_localparts_and_bucket_parts(raw):
    code = rule_broken(raw)
    if code is None:
        handle = validate_handle(raw)
        assert VALID.match(handle), handle
        assert handle not in RESERVED
    else:
        assert not VALID.match(raw) or raw in RESERVED or code == "confusable_reserved"


@given(st.from_regex(VALID, fullmatch=True))
def test_every_well_formed_label_is_accepted_unless_reserved_or_look_alike(handle):
    assume(handle not in RESERVED)
    assume(skeleton(handle) not in {skeleton(word) for word in RESERVED})
    assert validate_handle(handle) == handle
    assert validate_handle(handle.upper()) == handle


@given(st.text(max_size=60))
def test_any_text_is_accepted_normalised_or_refused_with_a_named_rule(raw):
    try:
        handle = validate_handle(raw)
    except ValidationError as exc:
        assert exc.code and exc.messages[0]
    else:
        assert handle == normalize(raw)
        assert VALID.match(handle)


@given(st.from_regex(VALID, fullmatch=True))
def test_skeleton_is_stable_and_idempotent(handle):
    assert skeleton(skeleton(handle)) == skeleton(handle)
    assert len(skeleton(handle)) <= len(handle)
