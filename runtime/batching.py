"""Faces from many requests batched into one engine run, and the service's Prometheus metrics.

    batcher = Batcher(toonifier.run, max_batch=8, max_wait=0.005, workers=1, metrics=metrics)
    toons = await batcher.submit(crops)      # [R, R, 3] uint8 crops of one request -> their toons

The batcher is asyncio on the outside (requests await their own toons) and threads on the inside
(each engine run goes to one of `workers` threads, so the event loop keeps accepting meanwhile).
A batch starts when a worker is free: it takes the waiting requests' faces up to `max_batch`,
waiting at most `max_wait` seconds after the first for more. A request whose faces do not fit
waits for the next batch (a request with more faces than `max_batch` is one batch alone).
"""
from __future__ import annotations

import asyncio
import bisect
import collections
import concurrent.futures
import functools
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Histogram:
    """A Prometheus histogram: cumulative bucket counts, sum and count."""

    def __init__(self, buckets: tuple[float, ...]):
        self.buckets, self.counts, self.sum, self.count = buckets, [0] * len(buckets), 0.0, 0

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.buckets, value)
        if i < len(self.counts):
            self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, total = [], 0
        for bound, n in zip(self.buckets, self.counts):
            total += n
            out.append(f'{name}_bucket{{le="{bound:g}"}} {total}')
        return out + [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum:.6f}", f"{name}_count {self.count}"]


class Metrics:
    """What /metrics reports: requests by status and reason, latency, queue depth, batch sizes, faces."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: collections.Counter = collections.Counter()     # (status code, reason) -> count
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.faces = 0
        self.in_service = 0          # requests accepted and not yet answered
        self.waiting_faces = 0       # faces queued for the engine

    def answered(self, status: int, reason: str, seconds: float | None) -> None:
        with self.lock:
            self.requests[status, reason] += 1
            if seconds is not None:
                self.latency.observe(seconds)

    def batch(self, faces: int) -> None:
        with self.lock:
            self.batch_size.observe(faces)
            self.faces += faces

    def text(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        with self.lock:
            lines = ["# HELP toonify_requests_total Requests answered, by HTTP status and reason.",
                     "# TYPE toonify_requests_total counter"]
            lines += [f'toonify_requests_total{{code="{code}",reason="{reason}"}} {n}'
                      for (code, reason), n in sorted(self.requests.items())]
            lines += ["# HELP toonify_request_seconds Time from arrival to answer of accepted requests.",
                      "# TYPE toonify_request_seconds histogram", *self.latency.lines("toonify_request_seconds"),
                      "# HELP toonify_batch_faces Faces per engine run (across requests).",
                      "# TYPE toonify_batch_faces histogram", *self.batch_size.lines("toonify_batch_faces"),
                      "# HELP toonify_faces_total Faces converted.", "# TYPE toonify_faces_total counter",
                      f"toonify_faces_total {self.faces}",
                      "# HELP toonify_queue_depth Requests in the service (accepted, not yet answered).",
                      "# TYPE toonify_queue_depth gauge", f"toonify_queue_depth {self.in_service}",
                      "# HELP toonify_queued_faces Faces waiting for the engine.",
                      "# TYPE toonify_queued_faces gauge", f"toonify_queued_faces {self.waiting_faces}"]
        return "\n".join(lines) + "\n"


@dataclass
class _Item:
    crops: list[np.ndarray]
    future: asyncio.Future
    style: str | None = None          # a conditioned model's style (None: a one-input model): one a run
    strength: float = 1.0             # and its strength, one a face


class Batcher:
    """Runs `run([N, R, R, 3] uint8, style=..., strength=[N]) -> [N, R, R, 3] uint8` (Toonifier.run)
    on the faces of many requests at once; requests of one style share a run, each face keeps its
    request's strength."""

    def __init__(self, run: Callable[..., np.ndarray], max_batch: int, max_wait: float, workers: int,
                 metrics: Metrics):
        self.run, self.max_batch, self.max_wait, self.metrics = run, max_batch, max_wait, metrics
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.free = asyncio.Semaphore(workers)
        self.pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="engine")
        self.held: _Item | None = None        # the request that did not fit the last batch
        self.task: asyncio.Task | None = None
        self.running: set[asyncio.Task] = set()

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Finish the batches running, then stop (requests still queued are cancelled)."""
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await asyncio.gather(*self.running, return_exceptions=True)
        self.pool.shutdown(wait=True)

    async def submit(self, crops: list[np.ndarray], style: str | None = None, strength: float = 1.0) -> np.ndarray:
        """The toons of one request's crops, in order; raises what the engine raised."""
        item = _Item(crops, asyncio.get_running_loop().create_future(), style, strength)
        self.metrics.waiting_faces += len(crops)
        self.queue.put_nowait(item)
        try:
            return await item.future
        finally:
            if not item.future.done():      # timed out or the client left: the batch skips it
                item.future.cancel()

    async def _next(self, timeout: float | None) -> _Item | None:
        if self.held is not None:
            item, self.held = self.held, None
            return item
        try:
            if timeout is None:
                return await self.queue.get()
            if timeout <= 0:
                return self.queue.get_nowait()
            return await asyncio.wait_for(self.queue.get(), timeout)
        except (asyncio.QueueEmpty, asyncio.TimeoutError):
            return None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.free.acquire()
            batch, faces, deadline = [], 0, None
            while faces < self.max_batch:
                item = await self._next(None if deadline is None else deadline - loop.time())
                if item is None:
                    break
                if item.future.done():
                    self.metrics.waiting_faces -= len(item.crops)
                    continue
                if batch and (faces + len(item.crops) > self.max_batch or item.style != batch[0].style):
                    self.held = item
                    break
                batch.append(item)
                faces += len(item.crops)
                deadline = deadline or loop.time() + self.max_wait
            task = loop.create_task(self._run(batch, faces))
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    async def _run(self, batch: list[_Item], faces: int) -> None:
        try:
            self.metrics.waiting_faces -= faces
            # Requests that timed out or left while the batch gathered are not run.
            batch = [item for item in batch if not item.future.done()]
            faces = sum(len(item.crops) for item in batch)
            if not batch:
                return
            crops = np.stack([c for item in batch for c in item.crops])
            condition = {}
            if batch[0].style is not None:          # a conditioned model: one style a run, a strength a face
                condition = {"style": batch[0].style,
                             "strength": np.concatenate([np.full(len(item.crops), item.strength, np.float32)
                                                         for item in batch])}
            try:
                toons = await asyncio.get_running_loop().run_in_executor(
                    self.pool, functools.partial(self.run, crops, **condition))
            except Exception as e:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(e)
                return
            self.metrics.batch(faces)
            start = 0
            for item in batch:
                if not item.future.done():
                    item.future.set_result(toons[start:start + len(item.crops)])
                start += len(item.crops)
        finally:
            self.free.release()
