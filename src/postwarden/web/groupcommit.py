"""Group commit: many requests' small writes done together, in one transaction per batch.

Under load, a transaction per request pays BEGIN, the write lock (SQLite) and COMMIT each
time, and a thread hop each time. Here each request hands over one item and awaits its own
outcome; one thread takes whatever is queued (up to ``max_batch``) and hands the list to
``write``, which stores them all at once and returns, per item, its result or the error that
refused it. A refused item must have written nothing (validate before writing, or use a
savepoint). When ``write`` raises, each item of that batch is written again alone, so one bad
item cannot fail the others. The thread ends when idle and starts again on demand.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

P = TypeVar("P")
R = TypeVar("R")


class _Job(Generic[P, R]):
    __slots__ = ("future", "item", "loop", "outcome")

    def __init__(self, item: P, loop: asyncio.AbstractEventLoop) -> None:
        self.item = item
        self.loop = loop
        self.future: asyncio.Future[R] = loop.create_future()
        self.outcome: R | BaseException | None = None


def _settle(jobs: list[_Job[Any, Any]]) -> None:
    for job in jobs:
        if not job.future.done():
            if isinstance(job.outcome, BaseException):
                job.future.set_exception(job.outcome)
            else:
                job.future.set_result(job.outcome)


class GroupCommit(Generic[P, R]):
    """See the module: ``await submit(item)`` returns ``write``'s outcome for that item."""

    def __init__(
        self,
        write: Callable[[list[P]], list[R | Exception]],
        *,
        max_batch: int = 256,
        idle: float = 2.0,
    ) -> None:
        self.write = write
        self.max_batch = max_batch
        self.idle = idle
        self._queue: queue.SimpleQueue[_Job[P, R]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    async def submit(self, item: P) -> R:
        job: _Job[P, R] = _Job(item, asyncio.get_running_loop())
        self._queue.put(job)
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._serve, name="postwarden-group-commit", daemon=True
                    )
                    self._thread.start()
        return await job.future

    def _serve(self) -> None:
        get = self._queue.get
        while True:
            try:
                batch = [get(timeout=self.idle)]
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._write(batch)
            by_loop: dict[asyncio.AbstractEventLoop, list[_Job[P, R]]] = {}
            for job in batch:
                by_loop.setdefault(job.loop, []).append(job)
            for loop, jobs in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_settle, jobs)
                except RuntimeError:  # that loop is closed: nobody is waiting any more
                    pass

    def _write(self, batch: list[_Job[P, R]]) -> None:
        try:
            outcomes = self.write([job.item for job in batch])
        except Exception as exc:
            if len(batch) == 1:
                batch[0].outcome = exc
                return
            for job in batch:  # alone, each as if it had never been grouped
                self._write([job])
            return
        for job, outcome in zip(batch, outcomes, strict=True):
            job.outcome = outcome
