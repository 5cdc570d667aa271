import base64
import io

import segno


def png(text: str, *, scale: int = 4) -> bytes:
    """A QR code of a WireGuard config, as the mobile apps scan it."""
    buffer = io.BytesIO()
    segno.make(text, error="m").save(buffer, kind="png", scale=scale, border=2)
    return buffer.getvalue()


def data_uri(text: str) -> str:
    return "data:image/png;base64," + base64.b64encode(png(text)).decode()
