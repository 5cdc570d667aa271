from datetime import timedelta

from django.utils import timezone

from infrasim_site.templatetags.console import relative, when


def test_times_read_as_words():
    now = timezone.now()
    assert relative(now - timedelta(seconds=5)) == "just now"
    assert relative(now - timedelta(minutes=5, seconds=3)) == "5\xa0minutes ago"
    assert relative(now + timedelta(minutes=2, seconds=30)) == "in 2\xa0minutes"
    assert relative(None) == ""


def test_a_time_element_carries_the_exact_moment():
    moment = timezone.now() - timedelta(hours=3, minutes=1)
    html = when(moment)
    assert html.startswith(f'<time datetime="{moment.isoformat()}"')
    assert "3\xa0hours ago" in html and moment.strftime("%Y-%m-%d %H:%M") in html
    assert when(None) == "never" and when(None, "—") == "—"
