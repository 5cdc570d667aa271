from infrasim_site.steps import backoff_delay


def test_the_one_retry_policy_doubles_caps_and_gives_up():
    delays = [backoff_delay(attempt, base=2, max_attempts=5) for attempt in range(1, 6)]
    assert delays == [2, 4, 8, 16, None]
    assert [backoff_delay(a, base=1, max_attempts=10, cap=30) for a in (5, 6, 7)] == [16, 30, 30]
