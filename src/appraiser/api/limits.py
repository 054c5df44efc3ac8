"""A client-side limit on concurrency and on requests and tokens per minute, shared by a client's threads.

The SDK retries a 429 after the provider's Retry-After; this keeps us from causing the 429 in the first
place when a user knows their tier's limits (`rpm=500`, `tpm=200000`). A sliding 60-second window of what
was sent decides whether the next call may go now or must wait.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable, Iterator

WINDOW_S = 60.0


class RateLimiter:
    """At most `concurrency` calls in flight, `rpm` requests and `tpm` tokens in any 60-second window."""

    def __init__(
        self,
        concurrency: int = 8,
        rpm: int | None = None,
        tpm: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency, self.rpm, self.tpm = concurrency, rpm, tpm
        self._slots = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()
        self._sent: collections.deque[tuple[float, int]] = collections.deque()
        self._clock, self._sleep = clock, sleep

    def _wait_for_room(self, tokens: int) -> None:
        while True:
            with self._lock:
                now = self._clock()
                while self._sent and now - self._sent[0][0] >= WINDOW_S:
                    self._sent.popleft()
                used = sum(t for _, t in self._sent)
                rpm_ok = self.rpm is None or len(self._sent) < self.rpm
                # A single call bigger than the whole budget still goes once the window is empty.
                tpm_ok = self.tpm is None or used + tokens <= self.tpm or not self._sent
                if rpm_ok and tpm_ok:
                    self._sent.append((now, tokens))
                    return
                wait = WINDOW_S - (now - self._sent[0][0])
            self._sleep(max(wait, 0.01))

    @contextlib.contextmanager
    def slot(self, tokens: int = 0) -> Iterator[None]:
        """Hold one of the concurrent slots for a call of about `tokens` tokens (prompt + max output)."""
        with self._slots:
            self._wait_for_room(tokens)
            yield
