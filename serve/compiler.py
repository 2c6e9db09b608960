"""Grammar compiles off the decode path, bounded in time and memory: `GrammarPool`.

Each compile runs in a child process (forked from a forkserver that has xgrammar imported), under an address
space cap. Past `timeout_s` the child is killed and the schema is refused; a child that dies (out of memory,
abort) refuses it too. Results, failures included, are cached by schema hash, so a bad schema costs its
time once. The child also runs the jump-forward search once on the fresh grammar, under the same limits.
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
from typing import Any

from schemabuild.errors import GrammarError
from schemabuild.grammar import JSON_OBJECT_EBNF, grammar_key

MAX_REPLY_BYTES = 256 * 2**20  # a serialized grammar larger than this is refused (the parent would hold it)


def _child(conn, info_json: str, memory_mb: int) -> None:
    """The compile worker: read (kind, text) jobs from `conn`, answer ("ok", serialized) or ("error", message)."""
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
    import xgrammar as xgr

    info = xgr.TokenizerInfo.deserialize_json(info_json)
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    while True:
        try:
            kind, text = conn.recv()
        except (EOFError, OSError):
            return
        try:
            if kind == "ebnf":
                grammar = compiler.compile_grammar(text)
            else:
                grammar = compiler.compile_json_schema(text, any_whitespace=False, separators=(",", ":"),
                                                       strict_mode=True)
            xgr.GrammarMatcher(grammar).find_jump_forward_string()  # must also stay inside the limits
            reply = ("ok", grammar.serialize_json())
        except MemoryError:
            reply = ("error", f"compiling the grammar needs more than {memory_mb} MB (compile memory limit)")
        except Exception as exc:  # noqa: BLE001 - xgrammar raises RuntimeError with a C++ location prefix
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "bad_alloc" in msg:
                msg = f"compiling the grammar needs more than {memory_mb} MB (compile memory limit)"
            reply = ("error", msg.split(": ", 1)[-1])
        conn.send(reply)


class _Worker:
    """One compile child process and its pipe."""

    def __init__(self, ctx, info_json: str, memory_mb: int):
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_child, args=(child, info_json, memory_mb), daemon=True,
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
    """Compile grammars for one tokenizer in child processes with a time and a memory limit; cache by schema hash."""

    def __init__(self, tokenizer_info, timeout_s: float = 10.0, memory_mb: int = 2048, workers: int = 1,
                 cache_size: int = 256):
        self.tokenizer_info = tokenizer_info
        self.timeout_s, self.memory_mb, self.cache_size = timeout_s, memory_mb, cache_size
        self._info_json = tokenizer_info.serialize_json()
        self._idle: "collections.deque[_Worker | None]" = collections.deque([None] * max(1, workers))
        self._free = threading.Semaphore(max(1, workers))
        self._lock = threading.Lock()
        self._cache: "collections.OrderedDict[str, Any]" = collections.OrderedDict()  # key -> grammar | GrammarError
        self._inflight: dict[str, threading.Event] = {}
        self.stats = collections.Counter()

    # -- public --

    def warm(self) -> None:
        """Start the child processes now (startup), so the first client schema does not wait for them."""
        with self._lock:
            for i, w in enumerate(self._idle):
                if w is None:
                    self._idle[i] = self._start()

    def compile(self, schema: dict | None):
        """The CompiledGrammar for `schema` (None = any JSON object); GrammarError when refused."""
        key = grammar_key(schema)
        while True:
            with self._lock:
                if key in self._cache:
                    self._cache.move_to_end(key)
                    self.stats["cache_hits"] += 1
                    hit = self._cache[key]
                    if isinstance(hit, GrammarError):
                        raise hit
                    return hit
                wait = self._inflight.get(key)
                if wait is None:
                    self._inflight[key] = threading.Event()
                    break
            wait.wait()  # the same schema is compiling for another request: share its result
        try:
            result = self._compile_uncached(schema)
        except GrammarError as exc:
            result = exc
        with self._lock:
            self._cache[key] = result
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
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
        ctx.set_forkserver_preload(["xgrammar", "schemabuild.serve.compiler"])
        return _Worker(ctx, self._info_json, self.memory_mb)

    def _compile_uncached(self, schema: dict | None):
        import xgrammar as xgr

        job = ("ebnf", JSON_OBJECT_EBNF) if schema is None else ("json", json.dumps(schema))
        self._free.acquire()
        with self._lock:
            worker = self._idle.popleft()
        t0 = time.perf_counter()
        try:
            if worker is None or not worker.proc.is_alive():
                worker = self._start()
            kind, payload = self._ask(worker, job)
        except GrammarError:
            worker.close()
            worker = None
            raise
        finally:
            with self._lock:
                self._idle.append(worker)
            self._free.release()
            self.stats["compiles"] += 1
            self.stats["compile_s"] += time.perf_counter() - t0
        if kind != "ok":
            self.stats["refused"] += 1
            raise GrammarError(f"unsupported or invalid JSON schema: {payload}")
        return xgr.CompiledGrammar.deserialize_json(payload, self.tokenizer_info)

    def _ask(self, worker: _Worker, job: tuple[str, str]):
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
