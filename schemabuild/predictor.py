"""Predict: load a model through its contract → constrained decoding → validated task outputs.

    predictor = Predictor.from_run(task)            # the task's latest run
    predictor.predict("billy play some Daft Punk").output   # ToolPick(tool='music.play', query='Daft Punk')

The prompts, grammar and predictions are the task model's (`inference.task_model.TaskModel`), as in the server.
"""

from __future__ import annotations

import time

from tqdm.auto import tqdm

from schemabuild.inference.decoder import PREFILL_CHUNK, Decoder
from schemabuild.inference.grammars import DEFAULT_BACKEND
from schemabuild.inference.task_model import Prediction, TaskModel
from schemabuild.errors import ConfigError
from schemabuild.inference.forward import ENGINES
from schemabuild.models import load_base, load_llamacpp, load_model, resolve_device
from schemabuild.runs import resolve_run

__all__ = ["Prediction", "Predictor"]


class Predictor:
    """A task's model behind the constrained decoder, in this process."""

    def __init__(self, task, model, tokenizer, contract: dict, device=None, jump_forward: bool = True,
                 prefix_cache: int = 8, grammar_backend: str = DEFAULT_BACKEND, speculate: bool = True,
                 prefill_chunk: int = PREFILL_CHUNK):
        decoder = Decoder(model, tokenizer, stop_ids=list(contract["stop_ids"]), device=device,
                          jump_forward=jump_forward, prefix_cache=prefix_cache, grammar_backend=grammar_backend,
                          speculate=speculate, prefill_chunk=prefill_chunk)
        self.task_model = TaskModel(task, decoder, contract)

    # -- setup --

    @classmethod
    def from_model_dir(cls, task, model_dir, device=None, prefix_cache: int = 8,
                       grammar_backend: str = DEFAULT_BACKEND, precision=None, speculate: bool = True,
                       engine: str = "torch", rows: int = 32, prefill_chunk: int = PREFILL_CHUNK) -> "Predictor":
        """Load `model_dir` (full weights or a PEFT adapter) after checking its contract against `task`; `precision`
        (fp32 / bf16 / int8 / auto, or a resolved precision.Precision) as in models.load_model. `engine` "llamacpp":
        llama.cpp runs the run's Q8_0 GGUF (`models.load_llamacpp`; `precision` and `device` do not apply) with room
        for `rows` sequences at once. `prefill_chunk`: see `Decoder` (it matters only to a server's running batch)."""
        if engine not in ENGINES:
            raise ConfigError(f"--engine {engine}: expected one of {', '.join(ENGINES)}")
        if engine == "llamacpp":
            forward, tokenizer, contract = load_llamacpp(task, model_dir, rows=rows, prefixes=prefix_cache)
            return cls(task, forward, tokenizer, contract, prefix_cache=prefix_cache, grammar_backend=grammar_backend,
                       speculate=speculate, prefill_chunk=prefill_chunk)
        device = resolve_device(device)
        model, tokenizer, contract = load_model(task, model_dir, device, precision=precision)
        return cls(task, model, tokenizer, contract, device=device, prefix_cache=prefix_cache,
                   grammar_backend=grammar_backend, speculate=speculate, prefill_chunk=prefill_chunk)

    @classmethod
    def from_run(cls, task, run=None, runs_dir=None, device=None, grammar_backend: str = DEFAULT_BACKEND,
                 precision=None, speculate: bool = True, engine: str = "torch") -> "Predictor":
        """The model of `run` (a path or run id; default: the task's latest run)."""
        model_dir = resolve_run(task.name, run, runs_dir, need="model") / "model"
        return cls.from_model_dir(task, model_dir, device, grammar_backend=grammar_backend, precision=precision,
                                  speculate=speculate, engine=engine)

    @classmethod
    def from_base(cls, task, base_dir_or_id, device=None, grammar_backend: str = DEFAULT_BACKEND) -> "Predictor":
        """An un-fine-tuned base model (for `eval --compare base`): same prompts and constrained decoding."""
        device = resolve_device(device)
        # The un-tuned base never saw the student prompt: it gets the full instructions (the "before" of before/after).
        model, tokenizer, contract = load_base(task, base_dir_or_id, device)
        return cls(task, model, tokenizer, contract, device=device, grammar_backend=grammar_backend)

    # -- properties --

    @property
    def task(self):
        return self.task_model.task

    @property
    def tokenizer(self):
        return self.task_model.tokenizer

    @property
    def decoder(self) -> Decoder:
        return self.task_model.decoder

    @property
    def contract(self) -> dict:
        return self.task_model.contract

    @property
    def schema(self) -> dict:
        return self.task_model.schema

    # -- run --

    def request(self, text: str, max_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                seed: int | None = None):
        """The decode Request for one input text."""
        return self.task_model.request(self.task_model.prompt_ids(text), max_tokens=max_tokens,
                                       temperature=temperature, top_p=top_p, seed=seed)

    def generate_raw(self, requests) -> list:
        """Decoder results for ready-made Requests (one batch)."""
        return self.decoder.generate(list(requests))

    def predict(self, text: str, max_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                seed: int | None = None) -> Prediction:
        """One input text → one Prediction."""
        t0 = time.perf_counter()
        [result] = self.decoder.generate([self.request(text, max_tokens, temperature, top_p, seed)])
        return self.task_model.prediction(result, (time.perf_counter() - t0) * 1000)

    def predict_many(self, texts: list[str], batch_size: int = 16, progress: bool = True,
                     max_tokens: int = 256) -> list[Prediction]:
        """Greedy predictions for `texts`, decoded `batch_size` at a time."""
        out: list[Prediction] = []
        bar = tqdm(total=len(texts), desc=f"predict {self.task.name}", unit="input", disable=not progress)
        for start in range(0, len(texts), max(1, batch_size)):
            chunk = texts[start:start + max(1, batch_size)]
            t0 = time.perf_counter()
            results = self.decoder.generate([self.request(t, max_tokens) for t in chunk])
            ms = (time.perf_counter() - t0) * 1000
            out.extend(self.task_model.prediction(r, ms) for r in results)
            bar.update(len(chunk))
        bar.close()
        return out
