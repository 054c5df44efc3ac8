"""Concurrent `/v1/price` requests for the same pricer become one `predict` call.

A local LLM prices 16 items in one padded batch far faster than 16 one-item calls; clients send one item
per request. The batcher takes the first waiting request, gathers whatever else arrives within `wait_s`
(or up to `max_items`), prices them together in a worker thread, and hands each request its slice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import anyio

from appraiser.items import Item
from appraiser.pricers.base import Prediction, Pricer


class PriceBatcher:
    def __init__(self, pricer: Pricer, max_items: int = 64, wait_s: float = 0.004, lock: Any = None):
        self.pricer, self.max_items, self.wait_s = pricer, max_items, wait_s
        self.lock = lock  # the model's lock, when chat completions share the model
        self._queue: asyncio.Queue[tuple[Sequence[Item], asyncio.Future[Any]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.calls = 0  # predict calls made (the benchmark and tests read it)

    async def price(self, items: Sequence[Item]) -> list[Prediction]:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._queue.put((items, fut))
        return await fut

    def _predict(self, items: list[Item]) -> list[Prediction]:
        if self.lock is None:
            return self.pricer.predict(items)
        with self.lock:
            return self.pricer.predict(items)

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            n = len(batch[0][0])
            deadline = asyncio.get_running_loop().time() + self.wait_s
            while n < self.max_items:
                timeout = deadline - asyncio.get_running_loop().time()
                try:
                    nxt = (
                        self._queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self._queue.get(), timeout)
                    )
                except (asyncio.QueueEmpty, TimeoutError):
                    break
                batch.append(nxt)
                n += len(nxt[0])
            items = [it for its, _ in batch for it in its]
            self.calls += 1
            try:
                preds = await anyio.to_thread.run_sync(self._predict, items)
            except Exception as e:
                if len(batch) == 1:
                    if not batch[0][1].done():
                        batch[0][1].set_exception(e)
                    continue
                # one request's items must not fail the others gathered with them: price each request alone
                for its, fut in batch:
                    if fut.done():  # its caller is gone
                        continue
                    try:
                        alone = await anyio.to_thread.run_sync(self._predict, list(its))
                    except Exception as own:
                        if not fut.done():
                            fut.set_exception(own)
                    else:
                        if not fut.done():
                            fut.set_result(alone)
                continue
            i = 0
            for its, fut in batch:
                if not fut.done():
                    fut.set_result(preds[i : i + len(its)])
                i += len(its)
