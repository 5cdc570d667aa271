"""Site-wide HTTP middleware: the Content-Security-Policy on HTML pages,
JSON errors for API request bodies Django refuses before DRF sees them, and
the marker that keeps the whole middleware chain in one thread under ASGI."""

from __future__ import annotations

import base64
import hashlib

from django.conf import settings
from django.http import JsonResponse

from infrasim_site.origins import websocket_sources

API_PREFIX = "/api/"

# The browsable API's template puts this one style attribute on its Filters
# and Extra Actions buttons; allowed by hash on API pages only, rather than
# forking DRF's base template.
DRF_STYLE_ATTRIBUTES = ["float: right; margin-right: 10px"]


def _style_hash(value: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(value.encode()).digest()).decode() + "'"


def content_security_policy(*, api: bool = False) -> str:
    # No third-party origin anywhere: every script, style and font is served
    # from the repository, and the only other connection is our WebSocket.
    connect = " ".join(["'self'", *websocket_sources()])
    style = ["'self'"]
    if api:
        style += ["'unsafe-hashes'", *map(_style_hash, DRF_STYLE_ATTRIBUTES)]
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            f"style-src {' '.join(style)}",
            "img-src 'self' data:",
            f"connect-src {connect}",
            "frame-ancestors 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            "object-src 'none'",
        ]
    )


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        self.policy = content_security_policy()
        self.api_policy = content_security_policy(api=True)

    def __call__(self, request):
        response = self.get_response(request)
        if response.get("Content-Type", "").startswith("text/html"):
            policy = self.api_policy if request.path.startswith(API_PREFIX) else self.policy
            response.setdefault("Content-Security-Policy", policy)
        return response


class ApiBodyLimitMiddleware:
    """An API body over DATA_UPLOAD_MAX_MEMORY_SIZE gets a JSON 413.

    Django raises RequestDataTooBig as soon as anything reads request.body
    (CSRF checks, session authentication), and turns it into its HTML 400 page.
    Multipart uploads are left alone: their file parts stream to disk and do
    not count against that limit."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith(API_PREFIX) and not request.content_type.startswith("multipart/"):
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                return JsonResponse({"detail": "Invalid Content-Length header.", "code": "parse_error"}, status=400)
            limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
            if limit is not None and length > limit:
                return JsonResponse(
                    {"detail": f"Request body too large: the limit is {limit} bytes.", "code": "request_too_large"},
                    status=413,
                )
        return self.get_response(request)


class OneThreadMiddleware:
    """Last in MIDDLEWARE, and sync-only on purpose: it passes every request
    straight on.

    Under ASGI Django builds the chain from the inside out and runs every
    middleware that can be sync in sync mode once one below it is sync-only.
    Without this marker the innermost ones (htmx, OTP, then Django's own) run
    in async mode, where each process_request/process_view/process_response
    hook of a MiddlewareMixin is its own sync_to_async call: about fifteen
    hand-offs between the event loop and the request's thread per request,
    which cost more than the view itself (bench/api_load.py). With it, the
    chain runs in that thread as under WSGI: one hand-off in, one out to
    resolve the URL, and the view back in the same thread, so database
    connections and transactions stay where they were."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)
