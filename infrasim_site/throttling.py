"""Rate limits on Redis (Django's cache), per client address and per account,
answered with 429 and Retry-After by DRF.

Rates come from settings.THROTTLE_RATES at request time (not at import, as
DRF's own classes read them), so an operator's setting and a test's override
both take effect. The client address is REMOTE_ADDR: uvicorn puts the real
client there when the proxy is trusted (--proxy-headers), and DRF's
X-Forwarded-For fallback, which any client can forge, is off (NUM_PROXIES=0).
"""

from __future__ import annotations

from django.conf import settings
from rest_framework.throttling import SimpleRateThrottle


class _Throttle(SimpleRateThrottle):
    def get_rate(self):
        return settings.THROTTLE_RATES.get(self.scope)

    def __init__(self):
        # DRF resolves the rate in __init__; resolve it per request instead.
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)


class AnonymousThrottle(_Throttle):
    """Every anonymous request, per client address."""

    scope = "anonymous"

    def get_cache_key(self, request, view):
        if request.user and request.user.is_authenticated:
            return None
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class AccountWriteThrottle(_Throttle):
    """Every change (POST, PUT, PATCH, DELETE) a signed-in account makes."""

    scope = "account_write"

    def get_cache_key(self, request, view):
        if request.method in ("GET", "HEAD", "OPTIONS") or not (request.user and request.user.is_authenticated):
            return None
        return self.cache_format % {"scope": self.scope, "ident": request.user.pk}


class ScopedThrottle(_Throttle):
    """A view's own limit (`throttle_scope`), counted per account and per
    client address alike, so neither many addresses nor many accounts get
    around it. Only the methods in `throttle_methods` (default: all) count."""

    scope = None

    def allow_request(self, request, view):
        self.scope = getattr(view, "throttle_scope", None)
        methods = getattr(view, "throttle_methods", None)
        if not self.scope or (methods and request.method not in methods):
            return True
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        self.now = self.timer()
        histories = {}
        for ident in self._idents(request):
            self.key = self.cache_format % {"scope": self.scope, "ident": ident}
            self.history = [t for t in self.cache.get(self.key, []) if t > self.now - self.duration]
            if len(self.history) >= self.num_requests:
                return self.throttle_failure()
            histories[self.key] = self.history
        # Counted only once every ident allowed it: a refused request costs nobody.
        for key, history in histories.items():
            self.cache.set(key, [self.now, *history], self.duration)
        return True

    def _idents(self, request):
        yield f"ip:{self.get_ident(request)}"
        if request.user and request.user.is_authenticated:
            yield f"user:{request.user.pk}"
