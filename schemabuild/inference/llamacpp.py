"""llama.cpp's forward pass under our decode loop: the `forward.Forward` engine over a GGUF (llama-cpp-python's C API).

    engine = LlamaCppForward("runs/…/gguf/tool_picker.q8_0.gguf", vocab_size=49152, rows=32)
    decoder = Decoder(engine, tokenizer, stop_ids=contract["stop_ids"])     # grammar, jump-forward, speculation: ours

One llama context holds every row: a pool of KV sequence ids (`n_seq_max`), one per live row and one per kept shared
prompt prefix, in one unified KV buffer. A pass feeds all rows' pending tokens in one `llama_batch` at each row's
own positions, asking logits only where the Decoder reads them. A shared prefix is decoded once into its own sequence
and copied into new rows (`llama_memory_seq_cp`, which shares the cells); rejected draft tokens and finished rows
leave with `llama_memory_seq_rm`. Token ids are the HF tokenizer's: the GGUF was written from it.
"""

from __future__ import annotations

import ctypes
import logging
import weakref

from schemabuild.errors import ConfigError
from schemabuild.inference.kv import prefix_tokens

INSTALL_HINT = ('CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON '
                '-DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_BF16=OFF" '
                'pip install llama-cpp-python==0.3.36 (it builds llama.cpp from source, as .ci/run does)')
GGML_TYPE_F32 = 0  # ggml_type of an f32 KV cache


def llama_api():
    """llama-cpp-python's C API module; ConfigError (one line, how to install) when it is not installed."""
    try:
        from llama_cpp import llama_cpp
    except ImportError:
        raise ConfigError(f"--engine llamacpp needs llama-cpp-python: {INSTALL_HINT}") from None
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # its load log is pages long
    return llama_cpp


class LlamaBatch:
    """A running batch on the llama.cpp engine: its rows and the KV sequence id each holds."""

    def __init__(self, engine: "LlamaCppForward", adapter: str | None = None):
        self.engine, self.adapter = engine, adapter
        self.rows: list = []
        self.seq_ids: dict[int, int] = {}  # id(row) -> its KV sequence id
        self.filling: LlamaBatch | None = None  # the rows still prefilling (a chunk of prompt per step)

    def tokens(self) -> int:
        """KV positions the rows hold."""
        return sum(row.n_seen for row in self.rows)

    def keep(self, rows: list) -> None:
        """Keep only `rows` (in order); the others' KV sequences are freed."""
        kept = {id(r) for r in rows}
        for row in self.rows:
            if id(row) not in kept:
                self.engine.release(self.seq_ids.pop(id(row)))
        self.rows = list(rows)


class LlamaCppForward:
    """The `forward.Forward` engine on llama.cpp: one context over a GGUF, a KV sequence slot per row."""

    device = "cpu"

    def __init__(self, path, vocab_size: int, rows: int = 32, prefixes: int = 8, n_ctx: int = 8192,
                 threads: int | None = None, kv_f32: bool = False):
        """`vocab_size`: the model's (its HF config's); the GGUF must have as many tokens. `rows`: most live rows,
        `prefixes`: most kept prompt prefixes (the Decoder's prefix cache size), `n_ctx`: KV positions in all.
        `threads`: torch's (`torch.get_num_threads()`) unless given. `kv_f32`: an f32 KV cache (f16 otherwise)."""
        import torch

        self.api = api = llama_api()
        self.path, self.threads = str(path), int(threads or torch.get_num_threads())
        api.llama_backend_init()
        model = api.llama_model_load_from_file(self.path.encode(), api.llama_model_default_params())
        if not model:
            raise ConfigError(f"llama.cpp cannot load {self.path}")
        n_vocab = api.llama_vocab_n_tokens(api.llama_model_get_vocab(model))
        if n_vocab != vocab_size:
            api.llama_model_free(model)
            raise ConfigError(f"{self.path}: {n_vocab} tokens, but the model's vocabulary has {vocab_size}; "
                              f"delete the file to have it written again from the model")
        self.vocab_size = int(vocab_size)
        self.context: int | None = min(int(api.llama_model_n_ctx_train(model)), n_ctx)
        self._ctx = api.llama_init_from_model(model, self._context_params(rows + prefixes + 1, n_ctx, kv_f32))
        if not self._ctx:
            api.llama_model_free(model)
            raise ConfigError(f"llama.cpp cannot make a context for {self.path} ({n_ctx} positions)")
        self.close = weakref.finalize(self, free_llama, api, self._ctx, model)  # close(): free them now
        self.desc = model_desc(api, model)
        self.n_ctx = n_ctx
        self._mem = api.llama_get_memory(self._ctx)
        self.slots = rows + prefixes + 1
        self._free = list(range(self.slots))[::-1]
        self._prefix_seqs: dict[tuple, int] = {}  # prefix cache key -> the sequence holding its KV
        self._feed = Feed(api, 0)

    def _context_params(self, n_seq: int, n_ctx: int, kv_f32: bool):
        params = self.api.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, n_ctx, min(512, n_ctx)
        params.n_seq_max, params.kv_unified, params.no_perf = n_seq, True, True
        params.n_threads = params.n_threads_batch = self.threads
        if kv_f32:
            params.type_k = params.type_v = GGML_TYPE_F32
        return params

    def describe(self) -> str:
        """One line: the engine, its file, its threads."""
        return f"engine: llama.cpp {self.desc} ({self.path}), {self.threads} thread{'s' if self.threads != 1 else ''}"

    # -- Forward --

    def new_batch(self, adapter: str | None = None) -> LlamaBatch:
        return LlamaBatch(self, adapter)

    def start(self, seqs: list, prefixes, adapter: str | None, adapter_names: list) -> LlamaBatch:
        part = LlamaBatch(self, adapter)
        try:
            for seq in seqs:
                part.seq_ids[id(seq)] = self.take()
                part.rows.append(seq)
                n = prefix_tokens(seq, prefixes)
                if n >= 1:
                    source = self.prefix_seq(prefixes, adapter, tuple(seq.req.prompt_ids[:n]))
                    self.api.llama_memory_seq_cp(self._mem, source, part.seq_ids[id(seq)], -1, -1)
                    seq.pending, seq.n_seen = seq.pending[n:], n
        except BaseException:
            part.keep([])
            raise
        return part

    def run(self, batch: LlamaBatch, keep: list[int], adapter_names: list | None):
        feed = self.feed_for(sum(len(seq.pending) for seq in batch.rows))
        outputs = []  # per row: the batch indices whose logits it gets
        for seq, k in zip(batch.rows, keep):
            outputs.append(feed.add(seq.pending, seq.n_seen, batch.seq_ids[id(seq)], min(k, len(seq.pending))))
            seq.n_seen += len(seq.pending)
            seq.pending = []
            seq.passes += 1
        self.decode(feed)
        return self.logits(outputs, max(keep))

    def drop_rejected(self, batch: LlamaBatch, rejected: list[int | None]) -> None:
        for seq, r in zip(batch.rows, rejected):
            if r and not self.api.llama_memory_seq_rm(self._mem, batch.seq_ids[id(seq)], seq.n_seen, -1):
                raise RuntimeError("llama.cpp could not remove rejected draft positions")

    def merge(self, batch: LlamaBatch, part: LlamaBatch) -> None:
        batch.rows += part.rows
        batch.seq_ids.update(part.seq_ids)
        part.rows, part.seq_ids = [], {}

    def split(self, part: LlamaBatch, rows: list) -> LlamaBatch:
        out = LlamaBatch(self, part.adapter)
        out.rows = list(rows)
        out.seq_ids = {id(r): part.seq_ids.pop(id(r)) for r in rows}
        part.rows = [r for r in part.rows if id(r) in part.seq_ids]
        return out

    # -- sequences --

    def take(self) -> int:
        """A free KV sequence id."""
        if not self._free:
            raise RuntimeError(f"llama.cpp engine: all {self.slots} sequence slots are in use")
        return self._free.pop()

    def in_use(self) -> int:
        """Sequence ids held (by live rows and kept prefixes)."""
        return self.slots - len(self._free)

    def release(self, seq_id: int) -> None:
        """Free a sequence id and its KV."""
        self.api.llama_memory_seq_rm(self._mem, seq_id, -1, -1)
        self._free.append(seq_id)

    def prefix_seq(self, prefixes, adapter: str | None, ids: tuple[int, ...]) -> int:
        """The sequence holding prompt prefix `ids`'s KV: kept in `prefixes` (a kv.PrefixCache), else decoded now."""
        seq_id = prefixes.get(adapter, ids)
        if seq_id is not None:
            return seq_id
        self.reclaim(prefixes)
        seq_id = self.take()
        feed = self.feed_for(len(ids))
        feed.add(list(ids), 0, seq_id, 1)
        try:
            self.decode(feed)
        except RuntimeError:
            self.release(seq_id)
            raise
        prefixes.put(adapter, ids, seq_id)
        self._prefix_seqs[(adapter, ids)] = seq_id
        self.reclaim(prefixes)
        return seq_id

    def reclaim(self, prefixes) -> None:
        """Free the sequences of prefixes `prefixes` dropped (least recently used, or cleared)."""
        kept = set(prefixes.keys())
        for key in [k for k in self._prefix_seqs if k not in kept]:
            self.release(self._prefix_seqs.pop(key))

    # -- passes --

    def feed_for(self, n_tokens: int) -> "Feed":
        """The (reused) batch buffer, emptied, with room for `n_tokens`."""
        if self._feed.capacity < n_tokens:
            self._feed = Feed(self.api, max(n_tokens, 2 * self._feed.capacity, 64))
        self._feed.n = 0
        return self._feed

    def decode(self, feed: "Feed") -> None:
        if feed.n > self.n_ctx:
            raise RuntimeError(f"llama.cpp engine: one pass of {feed.n} tokens exceeds the context ({self.n_ctx})")
        rc = self.api.llama_decode(self._ctx, feed.batch())
        if rc == 1:
            raise RuntimeError(f"llama.cpp engine: the KV cache ({self.n_ctx} positions) is full")
        if rc != 0:
            raise RuntimeError(f"llama.cpp engine: llama_decode failed ({rc})")

    def logits(self, outputs: list[list[int]], width: int):
        """[rows, width, vocab] float logits of each row's output indices, right-aligned (a view of llama.cpp's
        buffer when every row asked for `width`)."""
        import numpy as np
        import torch

        flat = [i for row in outputs for i in row]
        first = self.api.llama_get_logits_ith(self._ctx, flat[0])
        last = self.api.llama_get_logits_ith(self._ctx, flat[-1])
        n_vocab = self.vocab_size
        step = ctypes.sizeof(ctypes.c_float) * n_vocab
        if ctypes.addressof(last.contents) - ctypes.addressof(first.contents) == step * (len(flat) - 1):
            block = torch.from_numpy(np.ctypeslib.as_array(first, shape=(len(flat), n_vocab)))
        else:  # not laid out in batch order: copy row by row
            block = torch.stack([torch.from_numpy(np.ctypeslib.as_array(
                self.api.llama_get_logits_ith(self._ctx, i), shape=(n_vocab,))) for i in flat])
        if all(len(row) == width for row in outputs):
            return block.view(len(outputs), width, n_vocab)
        index, at = [], 0
        for row in outputs:
            index.append([0] * (width - len(row)) + list(range(at, at + len(row))))
            at += len(row)
        return block[torch.tensor(index)]



def free_llama(api, ctx, model) -> None:
    """Free a llama context, then its model."""
    api.llama_free(ctx)
    api.llama_model_free(model)


def model_desc(api, model) -> str:
    """llama.cpp's own one-word-ish description of a model (architecture, size, weight type)."""
    buf = ctypes.create_string_buffer(128)
    api.llama_model_desc(model, buf, len(buf))
    return buf.value.decode(errors="replace")


class Feed:
    """A `llama_batch` over buffers we own (numpy), reused pass after pass: tokens, positions, one sequence id each,
    and which positions want logits."""

    def __init__(self, api, capacity: int):
        import numpy as np

        self.api, self.capacity, self.n = api, capacity, 0
        self.token = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.n_seq_id = np.ones(capacity, dtype=np.int32)
        self.seq = np.zeros(capacity, dtype=np.int32)
        self.want = np.zeros(capacity, dtype=np.int8)
        base, size = self.seq.ctypes.data, self.seq.itemsize
        self.seq_ptrs = (ctypes.POINTER(api.llama_seq_id) * max(capacity, 1))(
            *[ctypes.cast(base + i * size, ctypes.POINTER(api.llama_seq_id)) for i in range(capacity)])

    def add(self, tokens: list[int], start: int, seq_id: int, n_logits: int) -> list[int]:
        """Append `tokens` of sequence `seq_id` at positions start..; the last `n_logits` want logits. Returns
        their batch indices."""
        a, b = self.n, self.n + len(tokens)
        self.token[a:b] = tokens
        self.pos[a:b] = range(start, start + len(tokens))
        self.seq[a:b] = seq_id
        self.want[a:b] = 0
        self.want[b - n_logits:b] = 1
        self.n = b
        return list(range(b - n_logits, b))

    def batch(self):
        """The llama_batch of the tokens added so far."""
        api, c = self.api, ctypes
        return api.llama_batch(
            n_tokens=self.n, token=self.token.ctypes.data_as(c.POINTER(api.llama_token)), embd=None,
            pos=self.pos.ctypes.data_as(c.POINTER(api.llama_pos)),
            n_seq_id=self.n_seq_id.ctypes.data_as(c.POINTER(c.c_int32)),
            seq_id=c.cast(self.seq_ptrs, c.POINTER(c.POINTER(api.llama_seq_id))),
            logits=self.want.ctypes.data_as(c.POINTER(c.c_int8)))
