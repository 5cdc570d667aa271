"""Starting calls at the same instant, to let the database decide races."""

from __future__ import annotations

import threading
from typing import Callable

from django.db import connection


def race(calls: list[Callable[[], object]], *, timeout: float = 30) -> list[object]:
    """Run every call on its own thread (and database connection), released
    together by a barrier. Returns each call's result, or the exception it
    raised, in the order given."""
    barrier = threading.Barrier(len(calls))
    outcomes: list[object] = [None] * len(calls)

    def run(index: int, call: Callable[[], object]) -> None:
        try:
            barrier.wait()
            outcomes[index] = call()
        except Exception as exc:  # noqa: BLE001 - handed back to the test to assert on
            outcomes[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=pair) for pair in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    return outcomes
