"""The ASGI request path makes one hop into a thread for the whole
middleware chain (bench/api_load.py measured ~15 hops without it)."""

from asgiref.sync import SyncToAsync
from django.core.handlers.asgi import ASGIHandler


def test_the_middleware_chain_runs_in_one_thread_hop():
    chain = ASGIHandler()._middleware_chain
    assert isinstance(chain, SyncToAsync), (
        "a middleware below infrasim_site.middleware.OneThreadMiddleware (or its removal) "
        "puts the chain back in async mode, one thread hop per hook"
    )
