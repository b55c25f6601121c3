"""Inference off the event loop, and dynamic micro-batching of concurrent requests.

`Worker` is the one thread that touches the model: every forward pass of the server runs there, one at a time, so
the event loop stays free to accept, parse and answer requests while the model works, and the model never sees
two callers at once.

`MicroBatcher` gathers what concurrent requests ask of one kind (e.g. /embed with the same options) into one call:
the first request waits at most `max_wait` seconds for others to join, a batch holds at most `max_batch` items (a
request of more items runs alone), and requests with other options wait for the next batch. While the worker is
busy, new requests queue, so under load a batch fills without waiting. `max_batch=1` turns batching off: one
request at a time. A batch that fails is run again request by request, so that one bad request fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ctxlm.serve.limits import Refused

log = logging.getLogger("ctxlm.serve")
T = TypeVar("T")


class Worker:
    """The inference thread: `await worker.run(f, *args)` runs f there and returns its result (or raises its
    exception) without blocking the event loop."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctxlm-inference")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Request:
    key: Hashable
    items: list
    future: asyncio.Future = field(repr=False)


@dataclass
class BatchStats:
    """What the batcher has done: calls of the batch function, the requests and items they served."""

    batches: int = 0
    requests: int = 0
    items: int = 0
    largest: int = 0  # items in the largest batch

    def public(self) -> dict[str, float]:
        mean = self.items / self.batches if self.batches else 0.0
        return {"batches": self.batches, "requests": self.requests, "items": self.items, "largest": self.largest,
                "mean_items_per_batch": round(mean, 2)}


class MicroBatcher:
    """`await batcher.submit(key, items)` → the results of `items`, in order, computed by
    `run_batch(key, all_items)` in the worker thread together with other requests' items of the same key.

    `run_batch` takes the key and a list of items and returns one result per item, in order."""

    def __init__(self, run_batch: Callable[[Hashable, list], Sequence], worker: Worker, *, max_batch: int = 64,
                 max_wait: float = 0.005, max_pending: int = 4096) -> None:
        if max_batch < 1 or max_wait < 0:
            raise ValueError("max_batch must be at least 1 and max_wait at least 0")
        self.run_batch, self.worker = run_batch, worker
        self.max_batch, self.max_wait, self.max_pending = max_batch, max_wait, max_pending
        self.stats = BatchStats()
        self._queue: deque[_Request] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    async def submit(self, key: Hashable, items: list) -> list:
        if len(self._queue) >= self.max_pending:
            raise Refused(f"the server is busy ({len(self._queue)} requests waiting); try again shortly", 429)
        if not items:
            return []
        self._start()
        request = _Request(key, list(items), asyncio.get_running_loop().create_future())
        self._queue.append(request)
        self._arrived.set()
        return await request.future

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:  # (a test's new loop)
            self._arrived = asyncio.Event()
            self._queue = deque(r for r in self._queue if r.future.get_loop() is loop)
            self._task = loop.create_task(self._serve(), name="ctxlm-batcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _serve(self) -> None:
        while True:
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            try:
                await self._gather()
                batch = self._take()
                if batch:
                    await self._run(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the loop must outlive any batch
                log.exception("micro-batcher: unexpected error; continuing")

    async def _gather(self) -> None:
        """Wait up to max_wait for the first request's batch to fill."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while self._pending_items(self._queue[0].key) < self.max_batch:
            left = deadline - loop.time()
            if left <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                return

    def _pending_items(self, key: Hashable) -> int:
        return sum(len(r.items) for r in self._queue if r.key == key and not r.future.done())

    def _take(self) -> list[_Request]:
        """The first live request and those after it with its key, up to max_batch items in all."""
        while self._queue and self._queue[0].future.done():  # its caller went away
            self._queue.popleft()
        if not self._queue:
            return []
        key, batch, size, rest, full = self._queue[0].key, [], 0, deque(), False
        while self._queue:
            request = self._queue.popleft()
            if request.future.done():
                continue
            fits = not batch or size + len(request.items) <= self.max_batch
            if request.key == key and fits and not full:
                batch.append(request)
                size += len(request.items)
            else:
                full |= request.key == key  # later requests of this key wait too: first come, first served
                rest.append(request)
        self._queue = rest
        return batch

    async def _run(self, batch: list[_Request]) -> None:
        items = [item for request in batch for item in request.items]
        try:
            results = await self.worker.run(self.run_batch, batch[0].key, items)
            if len(results) != len(items):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
        except Exception as err:  # noqa: BLE001 - handed to the callers
            if len(batch) == 1:
                _settle(batch[0].future, error=err)
            else:  # one bad request must not fail the others: run each alone
                for request in batch:
                    await self._run([request])
            return
        self.stats.batches += 1
        self.stats.requests += len(batch)
        self.stats.items += len(items)
        self.stats.largest = max(self.stats.largest, len(items))
        start = 0
        for request in batch:
            _settle(request.future, result=list(results[start:start + len(request.items)]))
            start += len(request.items)


def _settle(future: asyncio.Future, *, result: object = None, error: BaseException | None = None) -> None:
    if future.done():  # cancelled: the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
