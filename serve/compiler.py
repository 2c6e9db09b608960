"""Grammar compiles off the decode path, bounded in time and memory: `GrammarPool`.

For a backend that compiles slowly on some schemas (xgrammar), each compile runs in a child process (forked from a
forkserver that has the engine imported), under an address space cap. Past `timeout_s` the child is killed and the
schema is refused; a child that dies (out of memory, abort) refuses it too. The child also runs the jump-forward
search once on the fresh grammar, under the same limits. A backend that bounds its own work (llguidance's parser
limits) compiles on the calling thread. Results, failures included, go to the backend's one grammar cache, so a bad
schema costs its time once.
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import time

from schemabuild.errors import GrammarError
from schemabuild.inference.grammars import child_compiler, engine_error, grammar_key

MAX_REPLY_BYTES = 256 * 2**20  # a serialized grammar larger than this is refused (the parent would hold it)


def _child(conn, backend: str, tokenizer_spec: str, memory_mb: int) -> None:
    """The compile worker: read schema JSON texts (None = json_object) from `conn`, answer ("ok", payload) or
    ("error", message)."""
    import os
    import resource

    # Below the decode thread: where they share a core, a long compile takes the CPU the running batch leaves.
    os.nice(10)
    if memory_mb > 0:
        page = os.sysconf("SC_PAGE_SIZE")
        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * page
        cap = mapped + memory_mb * 2**20
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    compile_schema = child_compiler(backend, tokenizer_spec)
    too_big = f"compiling the grammar needs more than {memory_mb} MB (compile memory limit)"
    while True:
        try:
            schema_json = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply = ("ok", compile_schema(schema_json))
        except MemoryError:
            reply = ("error", too_big)
        except Exception as exc:  # noqa: BLE001 - engines raise RuntimeError with a C++ location prefix
            msg = engine_error(exc)
            reply = ("error", too_big if "bad_alloc" in msg else msg)
        conn.send(reply)


class _Worker:
    """One compile child process and its pipe."""

    def __init__(self, ctx, spec: tuple[str, str], memory_mb: int):
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_child, args=(child, *spec, memory_mb), daemon=True,
                                name="schemabuild-grammar")
        self.proc.start()
        child.close()
        self.conn = parent

    def close(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


class GrammarPool:
    """Compile grammars for one decoder's backend with a time and a memory limit (in child processes when the backend
    needs them); results and refusals go to the backend's grammar cache."""

    def __init__(self, backend, timeout_s: float = 10.0, memory_mb: int = 2048, workers: int = 1):
        self.backend = backend
        self.timeout_s, self.memory_mb = timeout_s, memory_mb
        self.spec = backend.child_spec()  # None: the backend bounds its own compiles, which run on the caller's thread
        self._idle: "collections.deque[_Worker | None]" = collections.deque([None] * max(1, workers))
        self._free = threading.Semaphore(max(1, workers))
        self._lock = threading.Lock()
        self._inflight: dict[str, threading.Event] = {}
        self.stats = collections.Counter()

    # -- public --

    def warm(self) -> None:
        """Start the child processes now (startup), so the first client schema does not wait for them."""
        if self.spec is None:
            return
        with self._lock:
            for i, w in enumerate(self._idle):
                if w is None:
                    self._idle[i] = self._start()

    def compile(self, schema: dict | None):
        """The compiled grammar for `schema` (None = any JSON object); GrammarError when refused."""
        key = grammar_key(schema)
        cache = self.backend.cache
        while True:
            with self._lock:
                if key in cache:
                    self.stats["cache_hits"] += 1
                    return cache.get(key)  # raises the cached refusal
                wait = self._inflight.get(key)
                if wait is None:
                    self._inflight[key] = threading.Event()
                    break
            wait.wait()  # the same schema is compiling for another request: share its result
        try:
            result = self._compile_uncached(schema)
        except GrammarError as exc:
            self.stats["refused"] += 1
            result = exc
        with self._lock:
            cache.put(key, result)
            self._inflight.pop(key).set()
        if isinstance(result, GrammarError):
            raise result
        return result

    async def acompile(self, schema: dict | None):
        """`compile` from async code, on a thread (the event loop and the decode thread never wait for it)."""
        return await asyncio.to_thread(self.compile, schema)

    def close(self) -> None:
        with self._lock:
            for w in self._idle:
                if w is not None:
                    w.close()
            self._idle = collections.deque([None] * len(self._idle))

    # -- work --

    def _start(self) -> _Worker:
        import multiprocessing

        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([self.spec[0], "schemabuild.serve.compiler"])
        return _Worker(ctx, self.spec, self.memory_mb)

    def _compile_uncached(self, schema: dict | None):
        t0 = time.perf_counter()
        try:
            if self.spec is None:
                return self.backend.compile(schema)
            return self._compile_in_child(schema)
        finally:
            self.stats["compiles"] += 1
            self.stats["compile_s"] += time.perf_counter() - t0

    def _compile_in_child(self, schema: dict | None):
        self._free.acquire()
        with self._lock:
            worker = self._idle.popleft()
        try:
            if worker is None or not worker.proc.is_alive():
                worker = self._start()
            kind, payload = self._ask(worker, None if schema is None else json.dumps(schema))
        except GrammarError:
            worker.close()
            worker = None
            raise
        finally:
            with self._lock:
                self._idle.append(worker)
            self._free.release()
        if kind != "ok":
            raise GrammarError(f"unsupported or invalid JSON schema: {payload}")
        return self.backend.load(payload)

    def _ask(self, worker: _Worker, job: str | None):
        deadline = time.monotonic() + self.timeout_s
        try:
            worker.conn.send(job)
            # Waiting for a fresh child's start counts too: it is part of what this request costs.
            if not worker.conn.poll(max(0.0, deadline - time.monotonic())):
                self.stats["timeouts"] += 1
                raise GrammarError(f"the grammar did not compile within {self.timeout_s:g} s "
                                   "(compile time limit, --compile-timeout-s)")
            return worker.conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            self.stats["crashes"] += 1
            raise GrammarError(f"compiling the grammar failed: the compiler ran out of memory or crashed "
                               f"(compile memory limit {self.memory_mb} MB)") from None
