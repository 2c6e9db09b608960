"""The request batcher: concurrent server requests decoded together on one worker thread per decoder."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import queue
import threading
import time
from typing import Any

from schemabuild.decode import GrammarError, Request, Result, grammar_cache_size


class QueueFull(Exception):
    """The engine's queue is full; the server answers 429."""


@dataclasses.dataclass
class _Job:
    req: Request
    future: Any
    loop: Any


class Engine:
    """Dynamic batching: a worker thread gathers requests for `window_ms` (up to `max_batch`) and decodes
    them together, one `Decoder.generate` per adapter group; each caller awaits its own result.

    A request's grammar is compiled before it joins the queue (by `grammars`, a GrammarPool, or else on a
    thread of its own), so the decode thread never waits for a compile.
    """

    def __init__(self, decoder, max_batch: int = 32, window_ms: float = 3.0, max_queue: int = 256, grammars=None):
        self.decoder = decoder
        self.grammars = grammars
        self.max_batch = max_batch
        self.window_ms = window_ms
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._stats = {"requests": 0, "batches": 0, "errors": 0, "prompt_tokens": 0, "completion_tokens": 0,
                       "forward_passes": 0, "batch_sizes": collections.Counter(), "busy_s": 0.0}
        self._stats_lock = threading.Lock()
        self.own_schemas: list = []  # the served tasks' schemas, compiled at start (see `_warm`)

    def start(self) -> None:
        if self.grammars is not None:
            threading.Thread(target=self._warm, daemon=True).start()
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="schemabuild-engine", daemon=True)
            self._thread.start()

    def _warm(self) -> None:
        """Start the compile children and compile the tasks' own grammars now: compiled lazily, a task's first
        normal request could queue behind a client's slow schema in the pool (8 s in the hardening test)."""
        self.grammars.warm()
        for schema in self.own_schemas:
            try:
                self.grammars.compile(schema)
            except GrammarError:
                pass  # answered to the first request that needs it

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the queued work, then end the worker thread."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)
        self._thread = None
        if self.grammars is not None:
            self.grammars.close()

    async def submit(self, req: Request) -> Result:
        """Queue `req` and wait for its result; QueueFull when the queue is full, GrammarError/ValueError for a bad request."""
        if req.constrained and req.grammar is None:
            try:
                if self.grammars is not None:
                    req.grammar = await self.grammars.acompile(req.schema)
                else:
                    req.grammar = await asyncio.to_thread(self.decoder.compile, req.schema)
            except GrammarError:
                self._count_error()
                raise
        try:
            self.decoder.check(req)
        except ValueError:
            self._count_error()
            raise
        if self._thread is None or not self._thread.is_alive():
            self.start()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        try:
            self._queue.put_nowait(_Job(req, fut, loop))
        except queue.Full:
            raise QueueFull(f"the request queue is full ({self._queue.maxsize} waiting)") from None
        return await fut

    def stats(self) -> dict:
        with self._stats_lock:
            s = dict(self._stats)
            s["batch_sizes"] = dict(sorted(self._stats["batch_sizes"].items()))
        s["queue_depth"] = self._queue.qsize()
        s["running"] = self._thread is not None and self._thread.is_alive()
        s["grammars_cached"] = grammar_cache_size()
        if self.grammars is not None:
            for key, value in self.grammars.stats.items():
                s[f"grammar_{key}"] = round(value, 6) if isinstance(value, float) else value
        return s

    def _count_error(self) -> None:
        with self._stats_lock:
            self._stats["requests"] += 1
            self._stats["errors"] += 1

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs, stopping = [job], False
            deadline = time.monotonic() + self.window_ms / 1000
            while len(jobs) < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                jobs.append(nxt)
            self._run(jobs)
            if stopping:
                return

    def _run(self, jobs: list[_Job]) -> None:
        good = [job for job in jobs if not job.future.done()]  # checked in submit; skip callers that left
        if not good:
            return
        t0 = time.perf_counter()
        try:
            results = self.decoder.generate([j.req for j in good])
        except Exception:  # noqa: BLE001 - isolate the request that breaks the batch
            results = None
        if results is None:
            for job in good:
                try:
                    [res] = self.decoder.generate([job.req])
                    self._settle(job, result=res)
                except Exception as exc:  # noqa: BLE001
                    self._settle(job, error=exc)
        else:
            for job, res in zip(good, results):
                self._settle(job, result=res)
        with self._stats_lock:
            self._stats["batches"] += 1
            self._stats["batch_sizes"][len(good)] += 1
            self._stats["busy_s"] += time.perf_counter() - t0

    def _settle(self, job: _Job, result: Result | None = None, error: Exception | None = None) -> None:
        with self._stats_lock:
            self._stats["requests"] += 1
            if error is not None:
                self._stats["errors"] += 1
            else:
                self._stats["prompt_tokens"] += result.prompt_tokens
                self._stats["completion_tokens"] += result.completion_tokens
                self._stats["forward_passes"] += result.forward_passes

        def resolve() -> None:
            if job.future.done():  # the caller went away
                return
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)

        try:
            job.loop.call_soon_threadsafe(resolve)
        except RuntimeError:  # the caller's loop is closed
            pass
