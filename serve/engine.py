"""The request scheduler: continuous batching of concurrent server requests on one worker thread per decoder.

A request joins the running batch at the next decode step (its prefill in a pass of its own, merged into the
batch's KV cache; a long prompt a chunk per step while the other rows keep decoding, see `Decoder.step`) and leaves
it the step it finishes. Each caller awaits its own result; a streaming caller
also gets the tokens of every step as they are decoded.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import queue
import threading
import time
from typing import Any

from schemabuild.errors import GrammarError
from schemabuild.inference.request import Request, Result


class QueueFull(Exception):
    """The engine cannot take the request now (queue full or too many tokens in flight); the server answers 429."""

    def __init__(self, message: str, code: str = "queue_full"):
        super().__init__(message)
        self.code = code


@dataclasses.dataclass(eq=False)
class Job:
    """One request in the engine: its future, and (streaming) the queue its new token ids go to."""

    req: Request
    future: Any
    loop: Any
    deltas: asyncio.Queue | None = None
    """Streaming only: lists of new completion token ids, one per step that produced any, then None."""
    tokens: int = 0
    """Tokens this request may hold in the KV cache (prompt + max_tokens), counted against the cap."""
    cancelled: bool = False
    sent: int = 0
    progress: float = dataclasses.field(default_factory=time.monotonic)
    """When it last made progress (queued, or a decode step that advanced it): what the request timeout bounds."""

    def cancel(self) -> None:
        """The caller left: the worker drops the sequence at the next step and frees its slot."""
        self.cancelled = True

    @property
    def gone(self) -> bool:
        return self.cancelled or self.future.done()


class Engine:
    """Continuous batching: a worker thread keeps a running batch, and every step admits waiting requests (up to
    `max_batch` rows in all), decodes one token (or a jump-forward span, or a confirmed draft) for every row, and
    hands finished rows back. LoRA adapters on one base share the batch when the decoder is `mixed` (`--mixed-adapters`), else each
    adapter has a batch of its own and they take their steps in turn, so none starves.

    Admission: at most `max_queue` requests wait, and the tokens in flight (prompt + max_tokens of every request
    admitted and not finished) stay under `max_tokens_in_flight` (a lone request is always admitted); past
    either, QueueFull (429). A request's grammar is compiled before it joins the queue (by `grammars`, a
    GrammarPool, or else on a thread of its own), so the decode thread never waits for a compile.
    """

    def __init__(self, decoder, max_batch: int = 32, window_ms: float = 3.0, max_queue: int = 256, grammars=None,
                 max_tokens_in_flight: int = 65536):
        self.decoder = decoder
        self.grammars = grammars
        self.max_batch = max_batch
        self.window_ms = window_ms
        self.max_tokens_in_flight = max_tokens_in_flight
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._in_flight = 0
        self._running = 0
        self._stats = {"requests": 0, "steps": 0, "errors": 0, "cancelled": 0, "prompt_tokens": 0,
                       "completion_tokens": 0, "forward_passes": 0, "batch_sizes": collections.Counter(),
                       "busy_s": 0.0}
        self._stats_lock = threading.Lock()

    def start(self) -> None:
        if self.grammars is not None:
            # the compile children start now, so the first client schema does not wait for them (the tasks' own
            # grammars were compiled at load, into the backend's cache the pool shares)
            threading.Thread(target=self.grammars.warm, daemon=True).start()
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="schemabuild-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the queued and running work, then end the worker thread."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)
        self._thread = None
        if self.grammars is not None:
            self.grammars.close()

    async def enqueue(self, req: Request, stream: bool = False) -> Job:
        """Check `req`, compile its grammar and admit it; QueueFull past the limits, GrammarError/ValueError
        for a bad request. Await `job.future` for the Result (and read `job.deltas` when streaming)."""
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
        job = Job(req, loop.create_future(), loop, asyncio.Queue() if stream else None,
                  tokens=len(req.prompt_ids) + req.max_tokens)
        with self._stats_lock:
            if self._in_flight and self._in_flight + job.tokens > self.max_tokens_in_flight:
                raise QueueFull(f"too many tokens in flight ({self._in_flight} of {self.max_tokens_in_flight}, "
                                f"this request needs up to {job.tokens})", code="tokens_in_flight")
            self._in_flight += job.tokens
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self._release(job)
            raise QueueFull(f"the request queue is full ({self._queue.maxsize} waiting)") from None
        return job

    async def submit(self, req: Request, idle_timeout_s: float | None = None) -> Result:
        """Queue `req` and wait for its result (see `enqueue`); a cancelled caller frees the sequence's slot.
        TimeoutError (and the sequence cancelled) after `idle_timeout_s` without progress (see `wait`)."""
        job = await self.enqueue(req)
        try:
            return await self.wait(job, idle_timeout_s)
        except (asyncio.CancelledError, asyncio.TimeoutError, TimeoutError):
            job.cancel()
            raise

    @staticmethod
    async def wait(job: Job, idle_timeout_s: float | None = None) -> Result:
        """`job`'s result. With `idle_timeout_s`, TimeoutError once that long passes without progress: waiting in
        the queue counts, but every decode step that advances the job starts the clock again, so a long answer that
        is still decoding never times out."""
        while True:
            left = None if idle_timeout_s is None else job.progress + idle_timeout_s - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"no progress for {idle_timeout_s:g} s")
            try:
                return await asyncio.wait_for(asyncio.shield(job.future), timeout=left)
            except (asyncio.TimeoutError, TimeoutError):
                continue  # the loop checks whether it progressed meanwhile

    def stats(self) -> dict:
        with self._stats_lock:
            s = dict(self._stats)
            s["batch_sizes"] = dict(sorted(self._stats["batch_sizes"].items()))
            s["tokens_in_flight"] = self._in_flight
            s["rows_running"] = self._running
        s["queue_depth"] = self._queue.qsize()
        s["running"] = self._thread is not None and self._thread.is_alive()
        s["grammars_cached"] = len(self.decoder.grammars.cache)
        if self.grammars is not None:
            for key, value in self.grammars.stats.items():
                s[f"grammar_{key}"] = round(value, 6) if isinstance(value, float) else value
        return s

    def _count_error(self) -> None:
        with self._stats_lock:
            self._stats["requests"] += 1
            self._stats["errors"] += 1

    def _release(self, job: Job) -> None:
        with self._stats_lock:
            self._in_flight -= job.tokens
            job.tokens = 0

    # -- the worker --

    def _admit(self, running: int, stopping: bool) -> tuple[list[Job], bool]:
        """Waiting jobs that fit in the batch; blocks (then waits `window_ms` for company) when nothing runs."""
        jobs: list[Job] = []
        if stopping:
            return jobs, stopping
        deadline = None
        while running + len(jobs) < self.max_batch:
            try:
                if running == 0 and not jobs:
                    nxt = self._queue.get()
                    deadline = time.monotonic() + self.window_ms / 1000
                elif deadline is not None:
                    left = deadline - time.monotonic()
                    nxt = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                else:
                    nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                return jobs, True
            if nxt.gone:  # the caller left while it waited
                self._settle(nxt, cancelled=True)
                continue
            jobs.append(nxt)
        return jobs, stopping

    def _work(self) -> None:
        batches: dict = {}  # group key: the decoder's running batch
        stopping = False
        while True:
            running = sum(len(self.decoder.live(b)) for b in batches.values())
            if stopping and running == 0:
                return
            jobs, stopping = self._admit(running, stopping)
            joining: dict[str | None, list[Job]] = {}
            for job in jobs:  # the decoder's grouping: one batch per adapter, or one in all when mixed
                key = self.decoder.group_key(job.req)
                joining.setdefault(key, []).append(job)
                batches.setdefault(key, self.decoder.new_batch(key))
            for adapter in list(batches):  # every adapter with work takes one step per round
                self._step(batches[adapter], joining.get(adapter, []))
                if not self.decoder.live(batches[adapter]):
                    del batches[adapter]
            with self._stats_lock:
                self._running = sum(len(self.decoder.live(b)) for b in batches.values())

    def _step(self, batch, jobs: list[Job]) -> None:
        left = [row for row in self.decoder.live(batch) if row.tag.gone]
        if left:
            self.decoder.drop(batch, left)
            for row in left:
                self._settle(row.tag, cancelled=True)
        running = [row.tag for row in self.decoder.live(batch)]  # decoding, then still prefilling
        if not running and not jobs:
            return
        t0 = time.perf_counter()
        size = len(running) + len(jobs)
        try:
            new_rows, finished = self.decoder.step(batch, [j.req for j in jobs])
        except Exception:  # noqa: BLE001 - isolate the request that breaks the batch: each again alone
            victims = running + jobs
            self.decoder.drop(batch, self.decoder.live(batch))
            for job in victims:
                self._alone(job)
            return
        for job, row in zip(jobs, new_rows):
            row.tag = job
        now = time.monotonic()
        for row in batch.rows + finished:
            row.tag.progress = now
            self._emit(row.tag, row.ids)
        for row in batch.filling.rows if batch.filling is not None else []:
            row.tag.progress = now  # a prefill chunk is progress too
        for row in finished:
            self._settle(row.tag, result=self.decoder.result(row))
        with self._stats_lock:
            self._stats["steps"] += 1
            self._stats["batch_sizes"][size] += 1
            self._stats["busy_s"] += time.perf_counter() - t0

    def _alone(self, job: Job) -> None:
        if job.sent:  # part of its answer is out: it cannot be decoded again from scratch
            self._settle(job, error=RuntimeError("decoding failed mid-stream"))
            return
        try:
            [res] = self.decoder.generate([job.req])
        except Exception as exc:  # noqa: BLE001
            self._settle(job, error=exc)
            return
        self._emit(job, res.token_ids)
        self._settle(job, result=res)

    def _emit(self, job: Job, ids: list[int]) -> None:
        """Streaming: send the token ids decoded since the last step."""
        if job.deltas is None or len(ids) <= job.sent or job.gone:
            return
        new, job.sent = list(ids[job.sent:]), len(ids)
        try:
            job.loop.call_soon_threadsafe(job.deltas.put_nowait, new)
        except RuntimeError:  # the caller's loop is closed
            job.cancel()

    def _settle(self, job: Job, result: Result | None = None, error: Exception | None = None,
                cancelled: bool = False) -> None:
        self._release(job)
        with self._stats_lock:
            self._stats["requests"] += 1
            if cancelled:
                self._stats["cancelled"] += 1
            elif error is not None:
                self._stats["errors"] += 1
            else:
                self._stats["prompt_tokens"] += result.prompt_tokens
                self._stats["completion_tokens"] += result.completion_tokens
                self._stats["forward_passes"] += result.forward_passes
        if cancelled:
            return

        def resolve() -> None:
            if job.deltas is not None:
                job.deltas.put_nowait(None)
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
