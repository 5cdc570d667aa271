"""Readable values for console pages: times as "just now" / "5 minutes ago"
/ "in 2 minutes" inside a <time> element that carries the exact moment."""

from __future__ import annotations

from datetime import timezone as dt_timezone

from django import template
from django.utils import timezone
from django.utils.html import format_html
from django.utils.timesince import timesince, timeuntil

register = template.Library()


@register.filter
def relative(moment) -> str:
    if not moment:
        return ""
    seconds = (timezone.now() - moment).total_seconds()
    if abs(seconds) < 60:
        return "just now"
    if seconds > 0:
        return f"{timesince(moment, depth=1)} ago"
    return f"in {timeuntil(moment, depth=1)}"


@register.simple_tag
def when(moment, never: str = "never"):
    """A <time> with readable words and the exact UTC moment on hover."""
    if not moment:
        return never
    return format_html(
        '<time datetime="{}" title="{} UTC">{}</time>',
        moment.isoformat(),
        moment.astimezone(dt_timezone.utc).strftime("%Y-%m-%d %H:%M"),
        relative(moment),
    )
