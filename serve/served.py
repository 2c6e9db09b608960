"""What is served: each task's model loaded (adapters on one base share it) and its contract checked."""

import dataclasses
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from schemabuild.config import ConfigError
from schemabuild.inference.decoder import Decoder
from schemabuild.inference.task_model import TaskModel
from schemabuild.models import adapter_base, is_adapter, load_adapters, load_checked, resolve_device
from schemabuild.precision import choose_precision
from schemabuild.predictor import Predictor
from schemabuild.runs import resolve_run
from schemabuild.serve.config import ServeConfig
from schemabuild.train import serving_gguf


@dataclasses.dataclass
class Served:
    """One task the server answers to: its task model (prompts, grammar, predictions) and the engine it runs on."""

    model: TaskModel
    engine: Any = None
    """The batching Engine (set by create_app; one per decoder)."""

    @property
    def task(self):
        return self.model.task

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def decoder(self) -> Decoder:
        """The decoder this task's requests run on (shared by the adapters of one base model)."""
        return self.model.decoder

    @property
    def adapter(self) -> str | None:
        """The PEFT adapter name chosen per request; None for a full-weight model."""
        return self.model.adapter

    @property
    def contract(self) -> dict:
        return self.model.contract

    @property
    def schema(self) -> dict:
        """The task's grammar schema (contract.grammar_schema(task.output)), compiled at load."""
        return self.model.schema


def as_served(item) -> Served:
    """A Served from a Served, a TaskModel or a schemabuild Predictor."""
    if isinstance(item, Served):
        return item
    return Served(item if isinstance(item, TaskModel) else item.task_model)


def _model_dir_for(task, cfg: ServeConfig, runs_dir) -> Path:
    run = resolve_run(task.name, cfg.run, runs_dir, need="model")
    return run / "model"


def load_models(tasks: list, cfg: ServeConfig, runs_dir=None, model_dirs: list | None = None) -> list[Served]:
    """Load each task's model (from `model_dirs` or its run), check its contract, share bases among adapters.

    Every contract is checked before any weights load. PEFT adapters on the same base (with the same
    tokenizer) are loaded onto one copy of it as named adapters; an adapter alone on its base is merged into it
    (no LoRA matmuls per step); full-weight models load on their own.
    """
    names = [t.name for t in tasks]
    if cfg.run and len(tasks) > 1 and model_dirs is None:
        raise ConfigError("--run: only valid when serving one task (each task serves its latest run)")
    if len(set(names)) != len(names):
        raise ConfigError(f"TASKS: each task may be served once, got {names}")
    device = resolve_device(cfg.device)
    precision = choose_precision(cfg.precision, device)  # refused (ConfigError) before any weights load
    dirs = [Path(d) for d in model_dirs] if model_dirs else [_model_dir_for(t, cfg, runs_dir) for t in tasks]

    full, adapters = [], defaultdict(list)  # adapters: (base, tokenizer identity) -> [(task, dir, tok, contract)]
    for task, model_dir in zip(tasks, dirs):
        contract, tokenizer = load_checked(task, model_dir)
        if is_adapter(model_dir, contract):
            vocab = hash(json.dumps(sorted(tokenizer.get_vocab().items())))
            key = (adapter_base(model_dir, contract), contract.get("chat_template_hash"), vocab)
            adapters[key].append((task, model_dir, tokenizer, contract))
        else:
            full.append((task, model_dir))

    for key in [k for k, members in adapters.items() if len(members) == 1]:  # alone on its base: served merged
        task, model_dir, *_ = adapters.pop(key)[0]
        full.append((task, model_dir))
    if cfg.engine == "llamacpp" and adapters:
        shared = ", ".join(t.name for members in adapters.values() for t, *_ in members)
        raise ConfigError(f"--engine llamacpp: serves one merged model per task, not adapters sharing a base "
                          f"({shared}); serve them one per process, or use --engine torch")
    if cfg.engine == "torch":
        print(precision.line, flush=True)
    served: dict[str, Served] = {}
    for task, model_dir in full:
        if cfg.engine == "llamacpp":
            serving_gguf(task, model_dir)
        served[task.name] = as_served(Predictor.from_model_dir(task, model_dir, device=device,
                                                               prefix_cache=cfg.prefix_cache,
                                                               grammar_backend=cfg.grammar_backend, precision=precision,
                                                               speculate=cfg.speculate, engine=cfg.engine,
                                                               rows=cfg.max_batch, prefill_chunk=cfg.prefill_chunk))
    for (base, *_), members in adapters.items():
        model = load_adapters(base, [(t.name, d) for t, d, *_ in members], device, precision=precision)
        tokenizer, contract = members[0][2], members[0][3]
        decoder = Decoder(model, tokenizer, stop_ids=list(contract["stop_ids"]), device=device,
                          prefix_cache=cfg.prefix_cache, mixed_adapters=cfg.mixed_adapters,
                          grammar_backend=cfg.grammar_backend, speculate=cfg.speculate,
                          prefill_chunk=cfg.prefill_chunk)
        for task, model_dir, tok, contract in members:
            served[task.name] = Served(TaskModel(task, decoder, contract, adapter=task.name))
    return [served[n] for n in names]
