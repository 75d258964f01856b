"""Waiting out a server that is down: the one retry policy, on tenacity.

Every place that must not give up while Kafka or PostgreSQL is away (a stream
worker's batch, a sink's send, a bridge's consumer, the alert feed's listener)
retries through :func:`retrying`: for ever, on the errors named, with a
doubling (or fixed) wait, a log line per retry and an optional hook for a
metric. Anything else propagates at once, cancellation included.

tenacity rather than stamina: stamina's retry hooks (metrics, logging) are
process-wide settings, where each caller here passes its own metric, and its
defaults give up after a bounded number of attempts, which is exactly what
these callers must never do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never, wait_exponential, wait_fixed

__all__ = ["retrying"]


def retrying(
    on: type[BaseException] | tuple[type[BaseException], ...],
    *,
    what: str,
    log: logging.Logger,
    wait_s: float = 0.2,
    max_wait_s: float | None = 5.0,
    on_retry: Callable[[BaseException], None] | None = None,
    level: int = logging.ERROR,
) -> AsyncRetrying:
    """A retrier that never stops while the operation fails with ``on``.

    Use it as ``await retrying(...)(fn, *args)`` or ``async for attempt in retrying(...):
    with attempt: ...``.

    Args:
        on: The exception types that mean "try again later".
        what: What failed, for the log line (``store write failed``).
        log: Where the line goes.
        wait_s: First wait.
        max_wait_s: Longest wait; the wait doubles up to it. None: always ``wait_s``.
        on_retry: Called with the error before each wait (count it).
        level: Log level of the line.
    """

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        assert exc is not None  # only failures are retried
        if on_retry is not None:
            on_retry(exc)
        pause = state.next_action.sleep if state.next_action is not None else 0.0
        log.log(level, "%s, retrying in %.1fs: %s", what, pause, exc)

    wait = wait_fixed(wait_s) if max_wait_s is None else wait_exponential(multiplier=wait_s, max=max_wait_s)
    return AsyncRetrying(retry=retry_if_exception_type(on), wait=wait, stop=stop_never, before_sleep=before_sleep)
