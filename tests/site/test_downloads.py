"""Large downloads resume: single byte ranges (RFC 9110 §14), If-Range and
the validators, streamed from the file in bounded chunks, as a client sees them.

Most tests call ranged_file_response with a RequestFactory request; the last
ones go through the whole middleware stack (test Client) and through the real
ASGI server (uvicorn), where a Content-Length that does not match the body
breaks the connection and where a body must stream without the whole file
being read first."""

from __future__ import annotations

import hashlib
import http.client
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote

import pytest
from django.conf import settings
from django.http import HttpRequest
from django.test import Client
from django.urls import path as url_path
from django.utils.http import http_date

from infrasim_site.downloads import CHUNK_SIZE, ranged_file_response

SIZE = 3 * 1024 * 1024
LAST_MODIFIED = datetime(2025, 3, 1, 12, 30, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Path, bytes, str]:
    """3 MiB of random bytes: any off-by-one shows as different bytes."""
    content = os.urandom(SIZE)
    path = tmp_path_factory.mktemp("downloads") / "appliance.tar.gz"
    path.write_bytes(content)
    return path, content, hashlib.sha256(content).hexdigest()


def _serve(request: HttpRequest, archive, **overrides):
    path, _, digest = archive
    arguments = {
        "content_type": "application/gzip",
        "filename": "appliance.tar.gz",
        "etag": digest,
        "last_modified": LAST_MODIFIED,
    } | overrides
    return ranged_file_response(request, path, **arguments)


def _body(response) -> bytes:
    try:
        return b"".join(response.streaming_content) if response.streaming else response.content
    finally:
        response.close()


def _open_paths() -> list[str]:
    paths = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass  # the descriptor listdir itself used, closed by now
    return paths


# --- Whole file -------------------------------------------------------------------------


def test_get_without_range_streams_the_whole_file_with_its_headers(rf, archive):
    _, content, digest = archive
    response = _serve(rf.get("/download"), archive)

    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Length"] == str(SIZE)
    assert response["Content-Type"] == "application/gzip"
    assert response["ETag"] == f'"{digest}"'
    assert response["Accept-Ranges"] == "bytes"
    assert response["Cache-Control"] == "private, no-transform"
    assert response["Last-Modified"] == "Sat, 01 Mar 2025 12:30:00 GMT"
    assert response["Content-Disposition"] == 'attachment; filename="appliance.tar.gz"'
    # A .tar.gz must not be announced as gzip-encoded: a browser would unpack it.
    assert "Content-Encoding" not in response
    assert "Content-Range" not in response
    assert _body(response) == content


def test_the_file_is_read_in_bounded_chunks_not_into_memory(rf, archive):
    _, content, _ = archive
    response = _serve(rf.get("/download"), archive)

    chunks = list(response.streaming_content)
    response.close()

    assert max(map(len, chunks)) <= CHUNK_SIZE
    assert len(chunks) >= SIZE // CHUNK_SIZE
    assert b"".join(chunks) == content


def test_last_modified_is_optional(rf, archive):
    response = _serve(rf.get("/download"), archive, last_modified=None)

    assert response.status_code == 200
    assert "Last-Modified" not in response
    response.close()


def test_the_open_file_is_closed_with_the_response(rf, archive, tmp_path):
    # A file of its own, so that no other test's response can hold it open.
    own = tmp_path / "own.bin"
    own.write_bytes(archive[1])
    response = _serve(rf.get("/download", headers={"Range": "bytes=10-20"}), (own, archive[1], archive[2]))
    path = str(own)
    assert _open_paths().count(path) == 1

    _body(response)

    assert path not in _open_paths()


# --- Single ranges -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=100-1099", 100, 1099),
        # Across chunk boundaries: the slice must not stop or overrun at one.
        (f"bytes={CHUNK_SIZE - 5}-{2 * CHUNK_SIZE + 5}", CHUNK_SIZE - 5, 2 * CHUNK_SIZE + 5),
        ("bytes=2000000-", 2000000, SIZE - 1),
        ("bytes=-500", SIZE - 500, SIZE - 1),
        (f"bytes={SIZE - 1}-{SIZE - 1}", SIZE - 1, SIZE - 1),
        # A last position past the end is clamped to the last byte.
        (f"bytes={SIZE - 10}-{SIZE + 5000}", SIZE - 10, SIZE - 1),
        # A suffix longer than the file is the whole file, as a 206.
        (f"bytes=-{SIZE * 2}", 0, SIZE - 1),
        # Units are case-insensitive; OWS around list elements is allowed.
        ("BYTES= 7-9 ", 7, 9),
        ("bytes=007-009", 7, 9),
        # A last position too long for int() is still "past the end".
        (f"bytes=5-{'9' * 5000}", 5, SIZE - 1),
    ],
)
def test_a_single_range_is_answered_with_exactly_those_bytes(rf, archive, header, first, last):
    _, content, digest = archive
    response = _serve(rf.get("/download", headers={"Range": header}), archive)

    assert response.status_code == 206
    assert response["Content-Range"] == f"bytes {first}-{last}/{SIZE}"
    assert response["Content-Length"] == str(last - first + 1)
    assert response["ETag"] == f'"{digest}"'
    assert response["Accept-Ranges"] == "bytes"
    assert response["Content-Disposition"] == 'attachment; filename="appliance.tar.gz"'
    assert _body(response) == content[first : last + 1]


@pytest.mark.parametrize(
    "header",
    [
        f"bytes={SIZE}-",
        f"bytes={SIZE}-{SIZE + 10}",
        "bytes=99999999999-",
        f"bytes={'9' * 5000}-",
        "bytes=-0",
    ],
)
def test_a_range_outside_the_file_is_416_with_the_size(rf, archive, header):
    response = _serve(rf.get("/download", headers={"Range": header}), archive)

    assert response.status_code == 416
    assert response["Content-Range"] == f"bytes */{SIZE}"
    assert _body(response) == b""


@pytest.mark.parametrize(
    "header",
    [
        "bytes=5-3",  # last before first
        "bytes=abc",
        "bytes=--5",
        "bytes=-",
        "bytes=",
        "bytes=1-2-3",
        "bytes=+1-2",
        "bytes=1_0-20",
        "bytes=\u0661-\u0662",  # Arabic-Indic digits, which int() would take
        "bytes 0-10",
        "items=0-10",
        "0-10",
        "",
    ],
)
def test_an_invalid_range_header_is_ignored_and_the_whole_file_sent(rf, archive, header):
    _, content, _ = archive
    response = _serve(rf.get("/download", headers={"Range": header}), archive)

    assert response.status_code == 200
    assert "Content-Range" not in response
    assert response["Content-Length"] == str(SIZE)
    assert _body(response) == content


def test_several_ranges_get_the_whole_file(rf, archive):
    """Allowed by RFC 9110 §14.2 instead of a multipart/byteranges body."""
    _, content, _ = archive
    response = _serve(rf.get("/download", headers={"Range": "bytes=0-1,5-6"}), archive)

    assert response.status_code == 200
    assert "Content-Range" not in response
    assert _body(response) == content


def test_range_on_an_empty_file(rf, tmp_path):
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    archive = (empty, b"", hashlib.sha256(b"").hexdigest())

    from_start = _serve(rf.get("/download", headers={"Range": "bytes=0-"}), archive)
    assert from_start.status_code == 416
    assert from_start["Content-Range"] == "bytes */0"
    _body(from_start)

    # Satisfiable but not expressible as a 206: the (empty) whole file.
    suffix = _serve(rf.get("/download", headers={"Range": "bytes=-10"}), archive)
    assert suffix.status_code == 200
    assert suffix["Content-Length"] == "0"
    assert _body(suffix) == b""


# --- If-Range ------------------------------------------------------------------------------


def test_if_range_with_the_current_etag_gets_the_range(rf, archive):
    _, content, digest = archive
    request = rf.get("/download", headers={"Range": "bytes=10-19", "If-Range": f'"{digest}"'})
    response = _serve(request, archive)

    assert response.status_code == 206
    assert _body(response) == content[10:20]


@pytest.mark.parametrize(
    "if_range",
    [
        '"0000000000000000000000000000000000000000000000000000000000000000"',
        "W/{current}",  # weak comparison is not enough for ranges
        "{bare}",  # not an entity tag at all
        http_date(LAST_MODIFIED.timestamp()),  # dates are not trusted
    ],
)
def test_if_range_that_does_not_match_strongly_gets_the_whole_file(rf, archive, if_range):
    _, content, digest = archive
    if_range = if_range.format(current=f'"{digest}"', bare=digest)
    request = rf.get("/download", headers={"Range": "bytes=10-19", "If-Range": if_range})
    response = _serve(request, archive)

    assert response.status_code == 200
    assert "Content-Range" not in response
    assert _body(response) == content


# --- Validators -----------------------------------------------------------------------


@pytest.mark.parametrize("if_none_match", ["{current}", "W/{current}", "*", '"other", {current}'])
def test_if_none_match_with_the_current_etag_is_304(rf, archive, if_none_match):
    _, _, digest = archive
    header = if_none_match.format(current=f'"{digest}"')
    response = _serve(rf.get("/download", headers={"If-None-Match": header, "Range": "bytes=0-9"}), archive)

    assert response.status_code == 304
    assert response["ETag"] == f'"{digest}"'
    assert response["Cache-Control"] == "private, no-transform"
    assert _body(response) == b""


def test_if_none_match_with_another_etag_gets_the_file(rf, archive):
    _, content, _ = archive
    response = _serve(rf.get("/download", headers={"If-None-Match": '"other"'}), archive)

    assert response.status_code == 200
    assert _body(response) == content


def test_if_modified_since_the_last_modification_is_304(rf, archive):
    request = rf.get("/download", headers={"If-Modified-Since": http_date(LAST_MODIFIED.timestamp())})
    response = _serve(request, archive)

    assert response.status_code == 304
    assert response["Last-Modified"] == "Sat, 01 Mar 2025 12:30:00 GMT"


def test_if_match_with_another_etag_is_412(rf, archive):
    response = _serve(rf.get("/download", headers={"If-Match": '"other"', "Range": "bytes=0-9"}), archive)

    assert response.status_code == 412


@pytest.mark.parametrize("etag", ['has"quote', "line\r\nbreak", "", "spa ce", "caf\u00e9"])
def test_an_etag_that_cannot_go_into_the_header_is_refused(rf, archive, etag):
    with pytest.raises(ValueError, match="entity tag"):
        _serve(rf.get("/download"), archive, etag=etag)


# --- HEAD and other methods ------------------------------------------------------------------


def test_head_has_the_headers_of_get_and_no_body(rf, archive):
    get = _serve(rf.get("/download"), archive)
    head = _serve(rf.head("/download"), archive)

    assert head.status_code == 200
    assert _body(head) == b""
    assert dict(head.headers) == dict(get.headers)
    assert head["Content-Length"] == str(SIZE)
    get.close()


def test_head_ignores_range_as_only_get_defines_it(rf, archive):
    """RFC 9110 §14.2: a Range on any method but GET is ignored."""
    response = _serve(rf.head("/download", headers={"Range": "bytes=0-9"}), archive)

    assert response.status_code == 200
    assert response["Content-Length"] == str(SIZE)
    assert "Content-Range" not in response
    assert _body(response) == b""


def test_other_methods_are_not_allowed(rf, archive):
    response = _serve(rf.post("/download"), archive)

    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"


# --- Content-Disposition ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "disposition"),
    [
        ('dump "prod" \\ 1.raw', 'attachment; filename="dump \\"prod\\" \\\\ 1.raw"'),
        # An attempt to end the quoted string and add a second parameter.
        ('x.raw"; filename="evil.exe', 'attachment; filename="x.raw\\"; filename=\\"evil.exe"'),
    ],
)
def test_quotes_in_an_ascii_filename_are_escaped_inside_the_quoted_string(rf, archive, filename, disposition):
    response = _serve(rf.get("/download"), archive, filename=filename)

    assert response["Content-Disposition"] == disposition
    response.close()


@pytest.mark.parametrize(
    "filename",
    [
        "mémoire-Ω.raw",
        "x.raw\r\nSet-Cookie: session=stolen",
        "x.raw\u202eexe.txt",  # right-to-left override: "x.rawtxt.exe" on screen
    ],
)
def test_a_non_ascii_or_control_character_filename_is_percent_encoded(rf, archive, filename):
    response = _serve(rf.get("/download"), archive, filename=filename)
    disposition = response["Content-Disposition"]
    response.close()

    assert disposition.startswith("attachment; filename*=utf-8''")
    encoded = disposition.removeprefix("attachment; filename*=utf-8''")
    # Nothing that could end the parameter or the header line.
    assert encoded.isascii() and encoded.isprintable()
    assert not set(encoded) & set(' ";\\\r\n')
    assert unquote(encoded) == filename


# --- Through the middleware and the real ASGI server ---------------------------------------


def _download_view(request: HttpRequest):
    served = Path(settings.RANGED_DOWNLOAD_TEST_FILE)
    return ranged_file_response(
        request,
        served,
        content_type="application/gzip",
        filename=served.name,
        etag=settings.RANGED_DOWNLOAD_TEST_ETAG,
    )


urlpatterns = [url_path("download", _download_view)]


@pytest.fixture()
def served(settings, archive):
    path, content, digest = archive
    settings.RANGED_DOWNLOAD_TEST_FILE = str(path)
    settings.RANGED_DOWNLOAD_TEST_ETAG = digest
    return content


@pytest.mark.urls(__name__)
def test_middleware_adds_no_content_encoding_to_a_range(served):
    response = Client().get("/download", headers={"Range": "bytes=3-7", "Accept-Encoding": "gzip, br"})

    assert response.status_code == 206
    assert "Content-Encoding" not in response
    assert response["Content-Length"] == "5"
    assert _body(response) == served[3:8]


@pytest.mark.urls(__name__)
def test_resuming_over_http_from_the_asgi_server(live, served):
    """What a download manager does: stop part-way, resume with Range and
    If-Range, and put the parts together."""
    connection = http.client.HTTPConnection("localhost", live.port, timeout=30)
    try:
        connection.request("HEAD", "/download")
        head = connection.getresponse()
        head.read()
        assert head.status == 200
        assert head.getheader("Content-Length") == str(SIZE)
        etag = head.getheader("ETag")

        cut = SIZE // 3 + 17
        connection.request("GET", "/download", headers={"Range": f"bytes=0-{cut - 1}"})
        first = connection.getresponse()
        first_part = first.read()
        assert first.status == 206

        connection.request("GET", "/download", headers={"Range": f"bytes={cut}-", "If-Range": etag})
        rest = connection.getresponse()
        rest_part = rest.read()
        assert rest.status == 206
        assert rest.getheader("Content-Range") == f"bytes {cut}-{SIZE - 1}/{SIZE}"
        assert rest.getheader("Content-Encoding") is None

        # Still the same connection: every body matched its Content-Length.
        connection.request("GET", "/download", headers={"Range": f"bytes={SIZE}-"})
        unsatisfiable = connection.getresponse()
        unsatisfiable.read()
        assert unsatisfiable.status == 416
        assert unsatisfiable.getheader("Content-Range") == f"bytes */{SIZE}"
    finally:
        connection.close()

    assert first_part + rest_part == served


def _read_position(path: Path) -> int:
    """How far this process has read into `path` (the live server is a thread
    of this process), from the kernel's view of its open descriptor."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                with open(f"/proc/self/fdinfo/{fd}") as info:
                    return int(info.readline().split()[1])
        except OSError:
            continue
    raise AssertionError(f"{path} is not open")


@pytest.mark.urls(__name__)
def test_the_asgi_server_streams_without_reading_the_whole_file_first(live, settings, tmp_path):
    """Django's ASGI handler reads a synchronous iterator to the end, into
    memory, before it sends the first byte; a multi-GB archive would be
    held in memory once per download. The client here reads 1 MiB and stops:
    the server must not have read much further than what the sockets hold."""
    size = 256 * 1024 * 1024
    big = tmp_path / "big.raw"
    with big.open("wb") as handle:
        handle.truncate(size)  # sparse: no disk space, reads as zeros
    settings.RANGED_DOWNLOAD_TEST_FILE = str(big)
    settings.RANGED_DOWNLOAD_TEST_ETAG = "sparse"

    connection = http.client.HTTPConnection("localhost", live.port, timeout=30)
    try:
        connection.request("GET", "/download")
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Length") == str(size)
        assert response.read(CHUNK_SIZE) == bytes(CHUNK_SIZE)
        time.sleep(0.5)  # time to read ahead, if the server were going to

        assert _read_position(big) <= 64 * 1024 * 1024
    finally:
        connection.close()

    # The client went away mid-download: the server closes the file.
    deadline = time.monotonic() + 10
    while str(big) in _open_paths():
        assert time.monotonic() < deadline, "the server kept the file open after the client left"
        time.sleep(0.05)
