"""Retrying what may fail for a moment: NVML calls and disk writes.

A driver answers ``IN_USE`` while a monitoring agent holds an instance for a
moment, ``TIMEOUT`` or ``UNKNOWN`` under load; a disk fills and is freed again.
:func:`retry` calls a function again after a growing pause, for those errors
only (:func:`is_transient`), and gives up after a bounded number of tries with
the last error. The pause is injected (``sleep=``), so tests never wait, and
``on_retry`` lets the caller journal every retry.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

# NVML errors that may pass by themselves (names as in NVML_ERROR_*, without the prefix).
TRANSIENT_NVML = frozenset(
    {"IN_USE", "TIMEOUT", "IRQ_ISSUE", "MEMORY", "NOT_READY", "NO_DATA", "UNKNOWN"}
)
# Disk errors that an operator can clear while miso waits (a full disk, a quota).
TRANSIENT_ERRNO = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EAGAIN, errno.EINTR, errno.EBUSY})


@dataclass(frozen=True)
class Backoff:
    """``tries`` calls in all; pauses of ``first_s``, times ``factor`` each, at most ``max_s``."""

    tries: int = 5
    first_s: float = 0.2
    factor: float = 2.0
    max_s: float = 5.0

    def delays(self) -> Iterator[float]:
        """The pauses between tries (``tries - 1`` of them)."""
        d = self.first_s
        for _ in range(max(0, self.tries - 1)):
            yield min(d, self.max_s)
            d *= self.factor

    @property
    def total_s(self) -> float:
        return sum(self.delays())


def nvml_error(exc: BaseException) -> str | None:
    """The NVML error name a miso error carries (``IN_USE``, ...), if any."""
    name = getattr(exc, "nvml_error", None)
    if name is None:
        details = getattr(exc, "details", None)
        if isinstance(details, dict):
            name = details.get("nvml_error")
    return str(name) if name else None


def is_transient(exc: BaseException) -> bool:
    """Whether trying again may succeed: a transient NVML error, or a full disk."""
    name = nvml_error(exc)
    if name is not None:
        return name in TRANSIENT_NVML
    if isinstance(exc, OSError):
        return exc.errno in TRANSIENT_ERRNO
    return False


def retry(
    fn: Callable[[], T],
    *,
    policy: Backoff = Backoff(),
    sleep: Callable[[float], None] = time.sleep,
    transient: Callable[[BaseException], bool] = is_transient,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> T:
    """``fn()``, tried again after a pause while it raises a transient error.

    ``on_retry(attempt, error, pause_s)`` runs before each pause (attempt counts from 1).
    After ``policy.tries`` failures the last error is raised unchanged, so the caller
    still sees the driver's own error code.
    """
    delays = policy.delays()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:
            if not transient(exc):
                raise
            pause = next(delays, None)
            if pause is None:
                raise
            if on_retry is not None:
                on_retry(attempt, exc, pause)
            sleep(pause)


# Driver methods that are safe to call again after a transient error: reads, and the two
# instance changes (a failed create removes its half-made GPU instance; a destroy of what
# is already gone fails with a non-transient error, and apply's rollback takes over).
RETRIED_DRIVER_CALLS = frozenset(
    {
        "device_count",
        "driver_version",
        "gpu",
        "gpu_model",
        "instances",
        "current_layout",
        "processes",
        "create_instance",
        "destroy_instance",
    }
)
RUN_BACKOFF = Backoff(tries=5, first_s=0.5, factor=2.0, max_s=8.0)


class RetryingDriver:
    """A driver whose calls are retried on transient NVML errors (:func:`is_transient`).

    What ``miso run`` talks to: one ``UNKNOWN`` or ``TIMEOUT`` from the driver is a
    retry that ``on_retry`` journals, not the end of a run; an error that persists
    through ``policy`` is raised as the driver raised it.
    """

    def __init__(
        self,
        inner: object,
        *,
        policy: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[str, int, BaseException, float], None] | None = None,
    ) -> None:
        self.inner = inner
        self.policy = policy if policy is not None else RUN_BACKOFF
        self.sleep = sleep
        self.on_retry = on_retry
        self.retries = 0

    def __getattr__(self, name: str) -> object:
        attr = getattr(self.inner, name)
        if name not in RETRIED_DRIVER_CALLS or not callable(attr):
            return attr

        def call(*args: object, **kwargs: object) -> object:
            def report(n: int, exc: BaseException, pause: float) -> None:
                self.retries += 1
                if self.on_retry is not None:
                    self.on_retry(name, n, exc, pause)

            return retry(
                lambda: attr(*args, **kwargs), policy=self.policy, sleep=self.sleep, on_retry=report
            )

        return call


def unwrap(drv: object) -> object:
    """The driver under any :class:`RetryingDriver`."""
    while isinstance(drv, RetryingDriver):
        drv = drv.inner
    return drv
