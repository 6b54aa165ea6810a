"""The retry budget for transient and busy faults, outside Prefect's task retries: the same
delays (CONNECTOR_DELIVERY_RETRIES, CONNECTOR_DELIVERY_RETRY_DELAY, doubling) for the calls a
task cannot retry alone (an OpenCTI work's expectations and closing, a channel's lease)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from mattermost_connector.config import ConnectorSettings
from mattermost_connector.errors import Fault, fault_of, one_line

T = TypeVar("T")
RETRIED = frozenset({Fault.TRANSIENT, Fault.BUSY})

log = logging.getLogger("mattermost_connector.retries")


def backoff(delay: float, attempt: int) -> float:
    """The wait before retry `attempt` (0 first): `delay`, doubling. Every retry loop of the
    connector (this budget, the Mattermost client, the live listener) waits this long, give
    or take its own cap and jitter."""
    return delay * 2**attempt


def delays(connector: ConnectorSettings) -> list[float]:
    """One delay per retry, doubling: 10, 20, 40 s by default (70 s in all)."""
    return [backoff(connector.delivery_retry_delay, n) for n in range(connector.delivery_retries)]


def retried(error: BaseException) -> bool:
    return fault_of(error) in RETRIED


def retry_call(
    action: Callable[[], T],
    connector: ConnectorSettings,
    what: str,
    retry_on: Callable[[Exception], bool] = retried,
) -> T:
    """`action()`, again after each delay while it fails with a fault `retry_on` accepts
    (by default a transient or busy one)."""
    return retry_with(action, delays(connector), what, retry_on)


def retry_with(
    action: Callable[[], T],
    budget: list[float],
    what: str,
    retry_on: Callable[[Exception], bool],
    logger: logging.Logger = log,
) -> T:
    """`action()`, again after each of `budget`'s delays while it fails with an error
    `retry_on` accepts; the last error is raised."""
    for attempt in range(len(budget) + 1):
        try:
            return action()
        except Exception as error:
            if attempt == len(budget) or not retry_on(error):
                raise
            logger.info(
                "%s: %s; again in %gs",
                what,
                one_line(error, limit=200, first_line=True),
                budget[attempt],
            )
            time.sleep(budget[attempt])
    raise AssertionError("unreachable")
