class ProviderError(Exception):
    """Base of provider failures; the message is shown to the user as is."""


class TransientProviderError(ProviderError):
    """Network trouble, timeouts, 5xx: worth retrying with backoff."""


class PermanentProviderError(ProviderError):
    """Name taken, credentials refused, bad configuration: retrying will not help."""
