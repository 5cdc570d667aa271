"""Large files sent to their owners (appliance archives, memory dumps) with
HTTP range requests (RFC 9110 §14), so that a broken download of several GB
resumes where it stopped instead of starting over.

Django's FileResponse always sends the whole file; ranged_file_response adds
single byte ranges, If-Range, and the preconditions of RFC 9110 §13 (through
Django's own get_conditional_response), and streams from an open file in
bounded chunks so that no file is ever read into memory.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from django.core.handlers.asgi import ASGIRequest
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseNotAllowed, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.utils.cache import get_conditional_response
from django.utils.http import content_disposition_header, http_date

# Large enough that a multi-GB file is not thousands of tiny writes per
# second, small enough that concurrent downloads do not pin much memory.
CHUNK_SIZE = 1 << 20

# RFC 9110 §8.8.3: the opaque part of an entity tag is printable ASCII but the
# quote (obs-text is left out: our tags are digests). A quote or a control
# character would make the ETag header ambiguous or split it.
_ETAG_VALUE = re.compile(r"[\x21\x23-\x7e]+")

# One range-spec of RFC 9110 §14.1.1: int-range (first-last or first-) or
# suffix-range (-length). ASCII digits only: `\d` and int() would also accept
# other scripts' digits and "1_000".
_RANGE_SPEC = re.compile(r"(?P<first>[0-9]+)-(?P<last>[0-9]*)|-(?P<suffix>[0-9]+)")

# Positions with more digits than this are beyond any file we store; they are
# compared as "larger than the file" rather than converted, because int()
# refuses strings over 4300 digits and a hostile header must not cause a 500.
_MAX_POSITION_DIGITS = 18
_BEYOND_ANY_FILE = 10**_MAX_POSITION_DIGITS


@dataclass(frozen=True)
class ByteRange:
    """Inclusive byte positions, already clamped to the file's size."""

    first: int
    last: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1


class _Unsatisfiable:
    """The Range header was valid but selects no byte of the file (416)."""


UNSATISFIABLE = _Unsatisfiable()


def _position(digits: str) -> int:
    significant = digits.lstrip("0") or "0"
    if len(significant) > _MAX_POSITION_DIGITS:
        return _BEYOND_ANY_FILE
    return int(significant)


def parse_range(header: str, size: int) -> ByteRange | _Unsatisfiable | None:
    """The single byte range a Range header asks of a file of `size` bytes.

    None means "send the whole file with 200": the header is not a valid
    `bytes` range set, which RFC 9110 §14.2 says to ignore, or it asks for
    several ranges. Answering several ranges would take a multipart/byteranges
    body; the RFC lets a server send the whole representation instead, and the
    resuming download managers we serve ask for one range at a time."""
    unit, equals, range_set = header.partition("=")
    if not equals or unit.lower() != "bytes":
        return None
    # A list in HTTP may carry empty elements and whitespace around commas.
    specs = [spec.strip(" \t") for spec in range_set.split(",")]
    specs = [spec for spec in specs if spec]
    if len(specs) != 1:
        return None
    match = _RANGE_SPEC.fullmatch(specs[0])
    if match is None:
        return None
    if match["suffix"] is not None:
        suffix_length = _position(match["suffix"])
        if suffix_length == 0:
            return UNSATISFIABLE
        if size == 0:
            # The suffix of an empty file is satisfiable, but a 206 cannot say
            # so: Content-Range has no form for zero bytes. The empty 200 is
            # that same (empty) content.
            return None
        return ByteRange(max(size - suffix_length, 0), size - 1)
    first = _position(match["first"])
    last = _position(match["last"]) if match["last"] else None
    if last is not None and last < first:
        # Syntactically invalid (RFC 9110 §14.1.1), so ignored, not a 416.
        return None
    if first >= size:
        return UNSATISFIABLE
    # A last position past the end means "to the end" (a client asking for a
    # fixed-size block it does not know is the last one).
    return ByteRange(first, size - 1 if last is None else min(last, size - 1))


def _if_range_allows_partial(request: HttpRequest, quoted_etag: str) -> bool:
    """If-Range (RFC 9110 §13.1.5) keeps a client from splicing a range of a
    changed file onto what it already has. Only a strong ETag match counts;
    a date or a weak tag sends the whole file, which is always correct (a date
    would only be safe if Last-Modified were a strong validator, which a
    one-second timestamp is not)."""
    if_range = request.headers.get("If-Range")
    if if_range is None:
        return True
    return if_range.strip(" \t") == quoted_etag


class _FileSlice:
    """A read-only view of the next `length` bytes of an open file.

    FileResponse reads until read() returns b""; stopping here keeps a 206
    from sending bytes after the range even if the file grew meanwhile. No
    fileno() on purpose: a server that sends files with sendfile() works from
    the descriptor and would not stop at the end of the range."""

    def __init__(self, file: BinaryIO, length: int) -> None:
        self._file = file
        self._remaining = length

    def read(self, size: int = -1) -> bytes:
        if self._remaining <= 0:
            return b""
        if size < 0 or size > self._remaining:
            size = self._remaining
        data = self._file.read(size)
        self._remaining -= len(data)
        return data

    def close(self) -> None:
        self._file.close()


class _ChunkedFileResponse(FileResponse):
    block_size = CHUNK_SIZE


class _ChunksReadInThreads:
    """The slice as an asynchronous iterator, for responses sent by Django's
    ASGI handler, each read in a worker thread so the event loop never waits
    on the disk.

    Given a synchronous iterator, that handler first reads it to the end into
    a list ("StreamingHttpResponse must consume synchronous iterators"): a
    multi-GB archive would be held in memory once per download before its
    first byte left. Iterated this way, each chunk is read when the previous
    one has been handed to the server, which stops asking while the client
    does not read. No __iter__: Django tells the two kinds apart by whether
    iter() works. close() is what Django calls when the response is done,
    including when the client went away."""

    def __init__(self, file_slice: _FileSlice) -> None:
        self._slice = file_slice

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while chunk := await asyncio.to_thread(self._slice.read, CHUNK_SIZE):
            yield chunk

    def close(self) -> None:
        self._slice.close()


def _validate_etag(etag: str) -> str:
    if not _ETAG_VALUE.fullmatch(etag):
        raise ValueError(f"not an entity tag value (no quotes, no control characters): {etag!r}")
    return f'"{etag}"'


def ranged_file_response(
    request: HttpRequest,
    path: Path,
    *,
    content_type: str,
    filename: str,
    etag: str,
    last_modified: datetime | None = None,
) -> HttpResponseBase:
    """Answer a GET or HEAD for the file at `path` as an attachment.

    `etag` is a strong validator of the file's content without quotes (a
    sha256 hex digest, say); `last_modified` should be timezone-aware. A file
    that cannot be opened raises OSError (FileNotFoundError...): the caller
    decides whether that is a 404.

    - 304 when If-None-Match matches (or If-Modified-Since holds), 412 when
      If-Match or If-Unmodified-Since fails: Django's RFC 9110 §13.2.2 order.
    - 206 with Content-Range for one satisfiable `Range: bytes=...` on a GET
      whose If-Range, if any, is our strong ETag.
    - 416 with `Content-Range: bytes */size` for a valid range past the end.
    - 200 with the whole file otherwise, including several ranges and a
      Range header that is not valid.
    - HEAD: the headers GET would send without Range (RFC 9110 §14.2: range
      handling is only defined for GET), with the Content-Length of the body.

    The file is opened once; the body streams from it in CHUNK_SIZE reads and
    Django closes it when the response is closed. Under ASGI the body is an
    asynchronous iterator (see _ChunksReadInThreads), otherwise (WSGI, the
    test client, RequestFactory) a FileResponse over the file.
    """
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET", "HEAD"])
    quoted_etag = _validate_etag(etag)

    def with_entity_headers(response: HttpResponseBase) -> HttpResponseBase:
        response["ETag"] = quoted_etag
        response["Accept-Ranges"] = "bytes"
        # private: the file belongs to one user, no shared cache may keep it.
        # no-transform: a proxy must not compress it, or byte positions of a
        # resumed download would no longer be positions in the file.
        response["Cache-Control"] = "private, no-transform"
        if last_modified is not None:
            response["Last-Modified"] = http_date(last_modified.timestamp())
        return response

    # Preconditions come before Range (RFC 9110 §13.2.2); the headers-only
    # response gives the 304 its ETag, Last-Modified and Cache-Control.
    entity_headers = with_entity_headers(HttpResponse())
    conditional = get_conditional_response(
        request,
        etag=quoted_etag,
        last_modified=int(last_modified.timestamp()) if last_modified is not None else None,
        response=entity_headers,
    )
    if conditional is not entity_headers:
        return conditional

    file = open(path, "rb")
    try:
        # The size of the file we hold open, not of whatever `path` names by
        # the time a separate stat() would run.
        size = os.fstat(file.fileno()).st_size
        requested = None
        if request.method == "GET" and "Range" in request.headers and _if_range_allows_partial(request, quoted_etag):
            requested = parse_range(request.headers["Range"], size)

        if requested is UNSATISFIABLE:
            file.close()
            response = with_entity_headers(HttpResponse(status=416, content_type="text/plain; charset=utf-8"))
            response["Content-Range"] = f"bytes */{size}"
            return response

        if isinstance(requested, ByteRange):
            status, first, length = 206, requested.first, requested.length
        else:
            status, first, length = 200, 0, size

        if request.method == "HEAD":
            file.close()
            response = HttpResponse(status=status, content_type=content_type)
        else:
            file.seek(first)
            file_slice = _FileSlice(file, length)
            if isinstance(request, ASGIRequest):
                response = StreamingHttpResponse(
                    _ChunksReadInThreads(file_slice), status=status, content_type=content_type
                )
            else:
                response = _ChunkedFileResponse(file_slice, status=status, content_type=content_type)
    except BaseException:
        file.close()
        raise

    with_entity_headers(response)
    response["Content-Length"] = str(length)
    if status == 206:
        response["Content-Range"] = f"bytes {first}-{first + length - 1}/{size}"
    response["Content-Disposition"] = content_disposition_header(True, filename)
    return response
