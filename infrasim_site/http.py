"""HTTP helpers shared by the apps' views."""

from django.utils.cache import patch_cache_control


def no_store(response):
    """Mark a response that carries a secret (a new token, a private key, a
    config with keys) so no browser or proxy cache keeps a copy."""
    patch_cache_control(response, no_store=True, no_cache=True, private=True, max_age=0)
    return response
