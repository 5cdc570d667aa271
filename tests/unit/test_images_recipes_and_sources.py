"""Pure parts of the image cache: recipe keys, checksum input, and finding
the host's Debian mirror in its APT sources."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from appliances import images

DEBIAN_OS_RELEASE = 'ID=debian\nVERSION_CODENAME=bookworm\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n'


def apt_tree(tmp_path: Path, *, sources: dict[str, str] | None = None, sources_list: str | None = None) -> Path:
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    for name, text in (sources or {}).items():
        (apt / "sources.list.d" / name).write_text(text)
    if sources_list is not None:
        (apt / "sources.list").write_text(sources_list)
    return apt


def os_release(tmp_path: Path, text: str = DEBIAN_OS_RELEASE) -> Path:
    path = tmp_path / "os-release"
    path.write_text(text)
    return path


def test_the_mirror_is_the_deb822_entry_serving_the_host_release_not_security(tmp_path):
    apt = apt_tree(
        tmp_path,
        sources={
            "debian.sources": (
                "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
                "Types: deb-src deb\n# a comment\nURIs: http://mirror.example/debian/\n"
                "Suites: bookworm bookworm-updates\nComponents: main\n"
            )
        },
    )

    assert images.host_debian_mirror(apt, os_release(tmp_path)) == "http://mirror.example/debian"


def test_disabled_deb822_and_source_only_stanzas_are_skipped(tmp_path):
    apt = apt_tree(
        tmp_path,
        sources={
            "a.sources": "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n\n"
            "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n",
            "b.sources": "Types: deb\nURIs: http://on.example/debian\nSuites: bookworm\n",
        },
    )

    assert images.host_debian_mirror(apt, os_release(tmp_path)) == "http://on.example/debian"


def test_a_one_line_sources_list_with_options_is_understood(tmp_path):
    apt = apt_tree(
        tmp_path,
        sources_list="# deb http://commented.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://old.example/debian bookworm main contrib\n",
    )

    assert images.host_debian_mirror(apt, os_release(tmp_path)) == "http://old.example/debian"


@pytest.mark.parametrize(
    "release",
    ['ID=ubuntu\nVERSION_CODENAME=noble\n', 'ID=debian\nVERSION_CODENAME=trixie\n'],
    ids=["not Debian", "no entry for the host release"],
)
def test_without_a_matching_debian_entry_the_fallback_is_deb_debian_org(tmp_path, release):
    apt = apt_tree(tmp_path, sources={"d.sources": "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n"})

    assert images.host_debian_mirror(apt, os_release(tmp_path, release)) == "http://deb.debian.org/debian"


def test_the_recipe_key_names_the_recipe_and_changes_with_its_definition(monkeypatch):
    key = images.recipe_key("debian-bookworm-local")

    assert key.startswith("debian-bookworm-local-")
    assert images.recipe_key("debian-bookworm-local") == key
    recipe = images.RECIPES["debian-bookworm-local"]
    monkeypatch.setitem(images.RECIPES, "debian-bookworm-local", replace(recipe, packages=(*recipe.packages, "vim")))
    assert images.recipe_key("debian-bookworm-local") != key


def test_an_unknown_recipe_is_named_with_the_known_ones(tmp_path):
    with pytest.raises(images.ImageError, match="'debian-sid'.*debian-bookworm-local"):
        images.build_local("debian-sid", cache_dir=tmp_path)


@pytest.mark.parametrize(
    ("algorithm", "expected", "message"),
    [
        ("md5", "0" * 32, "sha256 or sha512"),
        ("sha256", "0" * 63, "64 hexadecimal digits"),
        ("sha512", "g" * 128, "128 hexadecimal digits"),
    ],
)
def test_a_malformed_checksum_is_refused_before_any_download(tmp_path, algorithm, expected, message):
    with pytest.raises(images.ImageError, match=message):
        images.fetch("http://127.0.0.1:9/x", algorithm=algorithm, expected=expected, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_only_http_and_https_urls_are_fetched(tmp_path):
    with pytest.raises(images.ImageError, match="http or https"):
        images.fetch("file:///etc/passwd", algorithm="sha256", expected="0" * 64, cache_dir=tmp_path)


def test_a_cache_without_the_image_answers_none(tmp_path):
    assert images.lookup("sha256", "ab" * 32, cache_dir=tmp_path) is None
    assert images.lookup_local("debian-bookworm-local", cache_dir=tmp_path) is None
