"""Dynamic micro-batching: posts submitted from many threads are run as one model forward.

In the manner of TorchServe's and Triton's dynamic batchers: a caller submits one item and gets a
:class:`concurrent.futures.Future`; one worker thread takes the waiting items, at most ``max_batch_size`` at
a time, and hands them to ``run`` in one call. While fewer than ``max_batch_size`` items wait, the worker
waits for more -- at most ``max_wait_ms``, counted from the oldest waiting item or from the end of the
previous forward, whichever is later -- but only for items it has reason to expect:

- items announced by callers still preparing them (:meth:`BatchEngine.expect`: a post being decoded or
  captioned);
- the next items of the callers the previous forward answered, who have not submitted again yet (a client
  loop or a dashboard sends its next post when it gets its answer). Without this, a closed loop of N clients
  settles into two alternating half batches: the half answered last comes back while the other half runs.

So a lone caller never waits for company that is not coming, and under load a batch is whatever queued up
during the previous forward.

``run(items) -> list[result | Exception]`` answers every item: an exception in its slot fails that item's
future alone. A future cancelled before its batch starts (its client left, its deadline passed) is skipped
and costs no forward. ``max_batch_size=1`` turns batching off (one item per forward, in arrival order).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

LOG = logging.getLogger(__name__)
IDLE_EXIT_S = 5.0  # an idle worker thread ends (and starts again on the next submit): no idle threads


class BatchFuture(Future):
    """A :class:`Future` that also says how many items shared its forward (``batch_size``, set when done)."""

    batch_size: int | None = None


class BatchEngine(Generic[T, R]):
    """Coalesce items submitted from any thread into calls of ``run`` (see the module docstring).

    ``on_batch(size, seconds)`` is called after each forward (metrics). ``max_batch_size`` and
    ``max_wait_ms`` may be changed at any time; the next batch uses the new values.
    """

    def __init__(
        self,
        run: Callable[[list[T]], Sequence[R | BaseException]],
        max_batch_size: int = 16,
        max_wait_ms: float = 5.0,
        on_batch: Callable[[int, float], None] | None = None,
        name: str = "camim-batcher",
    ):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_wait_ms = max_wait_ms
        self.on_batch = on_batch
        self._name = name
        self._cond = threading.Condition()
        self._queue: deque[tuple[float, T, BatchFuture]] = deque()
        self._expected = 0  # items announced by callers and not yet submitted
        self._returning = 0  # items answered by the last forward whose callers have not submitted again
        self._free_since = 0.0  # when the last forward ended
        self._running = 0  # items in the forward now
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ callers
    @contextmanager
    def expect(self, n: int = 1) -> Iterator[None]:
        """Announce ``n`` items that the caller will submit inside this block (the worker may wait for them)."""
        with self._cond:
            self._expected += n
        try:
            yield
        finally:
            with self._cond:
                self._expected -= n
                self._cond.notify_all()

    def submit(self, item: T) -> BatchFuture:
        """Queue one item; its future gets ``run``'s answer for it (a result, or the exception in its slot)."""
        return self.submit_many([item])[0]

    def submit_many(self, items: Sequence[T]) -> list[BatchFuture]:
        """Queue several items at once (they are never split from each other by another caller's items)."""
        futures = [BatchFuture() for _ in items]
        now = time.monotonic()
        with self._cond:
            self._queue.extend((now, item, fut) for item, fut in zip(items, futures))
            self._returning = max(0, self._returning - len(items))
            if self._thread is None:
                self._start()
            self._cond.notify_all()
        return futures

    @property
    def depth(self) -> int:
        """Items waiting for a forward (cancelled ones included until the worker drops them)."""
        return len(self._queue)

    def drain(self, timeout: float) -> bool:
        """Wait until nothing is queued or running (at most ``timeout`` seconds); True when drained."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    # ------------------------------------------------------------------ worker
    def _start(self) -> None:
        """Start the worker thread (called with the lock held)."""
        self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        try:
            while (batch := self._next_batch()) is not None:
                self._answer(batch)
        except BaseException:  # a bug must not strand the queued items: another worker takes them
            with self._cond:
                self._thread = None
                if self._queue:
                    self._start()
            raise

    def _next_batch(self) -> list[tuple[T, BatchFuture]] | None:
        """The next items to run together; None (and the thread ends) after ``IDLE_EXIT_S`` with no work."""
        with self._cond:
            while not self._queue:
                if not self._cond.wait(IDLE_EXIT_S) and not self._queue:
                    self._thread = None  # under the lock: a submit from now on starts a new worker
                    return None
            while len(self._queue) < self.max_batch_size and (self._expected > 0 or self._returning > 0):
                since = max(self._queue[0][0], self._free_since)  # max_wait_ms read afresh on each wake-up
                left = since + self.max_wait_ms / 1000 - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch: list[tuple[T, BatchFuture]] = []
            while self._queue and len(batch) < self.max_batch_size:
                _, item, fut = self._queue.popleft()
                if fut.set_running_or_notify_cancel():  # False: cancelled while waiting -- skip it
                    batch.append((item, fut))
            self._running = len(batch)
            return batch

    def _answer(self, batch: list[tuple[T, BatchFuture]]) -> None:
        if not batch:  # every item was cancelled
            self._done()
            return
        start = time.perf_counter()
        try:
            outcomes: Sequence[Any] = self._run([item for item, _ in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"run answered {len(outcomes)} of {len(batch)} items")
        except Exception as exc:  # a failed forward fails its batch, never the worker
            outcomes = [exc] * len(batch)
        if self.on_batch is not None:  # before the answers, so a caller that got one sees its batch counted
            try:
                self.on_batch(len(batch), time.perf_counter() - start)
            except Exception:  # a broken observer must not strand the answers
                LOG.exception("on_batch failed")
        with self._cond:  # before the answers: a caller's next submit counts as its return
            self._returning = len(batch)
            self._free_since = time.monotonic()
        for (_, fut), outcome in zip(batch, outcomes):
            fut.batch_size = len(batch)
            if isinstance(outcome, BaseException):
                fut.set_exception(outcome)
            else:
                fut.set_result(outcome)
        self._done()

    def _done(self) -> None:
        with self._cond:
            self._running = 0
            self._cond.notify_all()
