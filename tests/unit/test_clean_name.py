"""The one cleaner for human names."""

import pytest

from infrasim_site.errors import InvalidInput
from infrasim_site.text import clean_name


def test_whitespace_is_collapsed_and_trimmed():
    assert clean_name("  Lab \t laptop\n ", field="name", max_length=64) == "Lab laptop"


def test_letters_of_any_script_and_emoji_are_kept():
    assert clean_name("Ада 🖥️ 研究室", field="name", max_length=64) == "Ада 🖥️ 研究室"


REFUSED = {
    "right-to-left override": ("evil\u202etxt.exe", "Text-direction"),
    "isolate": ("a\u2067b", "Text-direction"),
    "zero-width space": ("ad\u200bmin", "Invisible"),
    "soft hyphen": ("ad\u00admin", "Invisible"),
    "NUL": ("a\x00b", "Control"),
    "escape": ("a\x1b[31m", "Control"),
    "line separator": ("a\u2028b", "Control"),
    "private use": ("a\ue000", "Private-use"),
    "non-character": ("a\ufffe", "non-characters"),
    "lone surrogate": ("a\ud800", "non-characters"),
    "unassigned": ("a\U000e0fff", "Unassigned"),
}


@pytest.mark.parametrize("value, message", REFUSED.values(), ids=REFUSED.keys())
def test_characters_that_disguise_or_break_a_name_are_refused_naming_the_field(value, message):
    with pytest.raises(InvalidInput) as refused:
        clean_name(value, field="display_name", max_length=64)
    assert refused.value.field == "display_name"
    assert message in refused.value.message
    assert refused.value.as_dict()["display_name"] == [refused.value.message]


def test_too_long_is_refused_after_collapsing():
    assert clean_name("a  b", field="name", max_length=3) == "a b"
    with pytest.raises(InvalidInput, match="At most 3 characters"):
        clean_name("abcd", field="name", max_length=3)


@pytest.mark.parametrize("value", [None, "", "   \n"])
def test_blank_is_refused_when_required_and_empty_otherwise(value):
    with pytest.raises(InvalidInput) as refused:
        clean_name(value, field="name", max_length=10)
    assert refused.value.code == "required"
    assert clean_name(value, field="name", max_length=10, required=False) == ""


@pytest.mark.parametrize("value", [42, ["a"], {"a": 1}])
def test_a_non_string_is_refused(value):
    with pytest.raises(InvalidInput) as refused:
        clean_name(value, field="name", max_length=10)
    assert refused.value.code == "invalid_type"
