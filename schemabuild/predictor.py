"""Predict: load a model through its contract → constrained decoding → validated task outputs.

    predictor = Predictor.from_run(task)            # the task's latest run
    predictor.predict("billy play some Daft Punk").output   # ToolPick(tool='music.play', query='Daft Punk')

Prompts come only from `contract.encode_prompt`, the grammar only from `contract.grammar_schema`, the stop
ids only from the model's `contract.json`, so predictions see exactly what training saw.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel


@dataclasses.dataclass
class Prediction:
    """One prediction: the validated output (None when the text did not complete or validate) and its numbers."""

    output: BaseModel | None
    """The validated `task.output` instance; None when finish_reason is "length" or validation failed."""
    text: str
    """The generated JSON text."""
    finish_reason: str
    """"stop" or "length"."""
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    """Wall time of the decode call this prediction came from (the whole batch for `predict_many`)."""
    confidence: dict[str, float]
    """Per top-level field: the product of the grammar-masked probabilities of the tokens that wrote its value."""
    error: str | None = None
    """Why `output` is None (one line), else None."""


def resolve_device(device=None) -> str:
    """`device` if given, else cuda when available, else cpu."""
    import torch

    if device:
        return str(device)
    return "cuda" if torch.cuda.is_available() else "cpu"


class Predictor:
    """A task's model behind the constrained decoder."""

    def __init__(self, task, model, tokenizer, contract: dict, device=None, jump_forward: bool = True):
        from schemabuild.contract import grammar_schema
        from schemabuild.decode import Decoder

        self._task = task
        self._tokenizer = tokenizer
        self._contract = contract
        self.schema = grammar_schema(task.output)
        self._decoder = Decoder(model, tokenizer, stop_ids=list(contract["stop_ids"]), device=device,
                                jump_forward=jump_forward)
        self._decoder.compile(self.schema)  # pay the grammar compile at load, not on the first request

    # -- setup --

    @classmethod
    def from_model_dir(cls, task, model_dir, device=None) -> "Predictor":
        """Load `model_dir` (full weights or a PEFT adapter, merged for inference) after checking its contract."""
        model_dir = Path(model_dir)
        contract, tokenizer = load_checked(task, model_dir)
        device = resolve_device(device)
        if contract.get("adapter"):
            from peft import PeftModel

            base = _adapter_base(model_dir, contract)
            model = PeftModel.from_pretrained(_load_causal_lm(base, device), str(model_dir))
        else:
            model = _load_causal_lm(model_dir, device)
        model = inference_model(model, device)
        return cls(task, model, tokenizer, contract, device=device)

    @classmethod
    def from_run(cls, task, run=None, runs_dir=None, device=None) -> "Predictor":
        """The model of `run` (a path or run id; default: the task's latest run)."""
        from schemabuild.runs import resolve_run

        return cls.from_model_dir(task, resolve_run(task.name, run, runs_dir, need="model") / "model", device)

    @classmethod
    def from_base(cls, task, base_dir_or_id, device=None) -> "Predictor":
        """An un-fine-tuned base model (for `eval --compare base`): same prompts and constrained decoding."""
        from transformers import AutoTokenizer

        from schemabuild.contract import build_contract

        device = resolve_device(device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(base_dir_or_id), trust_remote_code=False)
        except OSError as exc:
            from schemabuild.task import TaskError

            raise TaskError(f"base model {base_dir_or_id}: cannot load its tokenizer ({str(exc).splitlines()[0]})") from None
        # The un-tuned base never saw the student prompt: it gets the full instructions (the "before" of before/after).
        contract = build_contract(task, tokenizer, base_model=str(base_dir_or_id), prompt="full", adapter=False)
        model = _load_causal_lm(base_dir_or_id, device)
        model.to(device).eval()
        return cls(task, model, tokenizer, contract, device=device)

    # -- properties --

    @property
    def task(self):
        return self._task

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def decoder(self):
        return self._decoder

    @property
    def contract(self) -> dict:
        return self._contract

    # -- run --

    def request(self, text: str, max_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                seed: int | None = None):
        """The decode Request for one input text."""
        from schemabuild.contract import encode_prompt, system_prompt
        from schemabuild.decode import Request

        ids = encode_prompt(self._tokenizer, system_prompt(self._task, self._contract), text)
        return Request(prompt_ids=ids, schema=self.schema, max_tokens=max_tokens, temperature=temperature,
                       top_p=top_p, seed=seed)

    def generate_raw(self, requests) -> list:
        """Decoder results for ready-made Requests (one batch)."""
        return self._decoder.generate(list(requests))

    def predict(self, text: str, max_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                seed: int | None = None) -> Prediction:
        """One input text → one Prediction."""
        t0 = time.perf_counter()
        [result] = self._decoder.generate([self.request(text, max_tokens, temperature, top_p, seed)])
        return self.to_prediction(result, (time.perf_counter() - t0) * 1000)

    def predict_many(self, texts: list[str], batch_size: int = 16, progress: bool = True,
                     max_tokens: int = 256) -> list[Prediction]:
        """Greedy predictions for `texts`, decoded `batch_size` at a time."""
        from tqdm.auto import tqdm

        out: list[Prediction] = []
        bar = tqdm(total=len(texts), desc=f"predict {self._task.name}", unit="input", disable=not progress)
        for start in range(0, len(texts), max(1, batch_size)):
            chunk = texts[start:start + max(1, batch_size)]
            t0 = time.perf_counter()
            results = self._decoder.generate([self.request(t, max_tokens) for t in chunk])
            ms = (time.perf_counter() - t0) * 1000
            out.extend(self.to_prediction(r, ms) for r in results)
            bar.update(len(chunk))
        bar.close()
        return out

    def to_prediction(self, result, latency_ms: float) -> Prediction:
        """A decoder Result as a Prediction: validated output, or None with the reason."""
        from pydantic import ValidationError

        output, error = None, None
        if result.finish_reason != "stop":
            error = f"the output did not finish within {result.completion_tokens} tokens"
        else:
            try:
                output = self._task.output.model_validate_json(result.text)
            except ValidationError as exc:
                err = exc.errors()[0]
                loc = ".".join(str(p) for p in err["loc"]) or "(root)"
                error = f"field {loc!r}: {err['msg']}"
        return Prediction(
            output=output, text=result.text, finish_reason=result.finish_reason,
            prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
            latency_ms=latency_ms, confidence=field_confidence(self._tokenizer, result, self._decoder.stop_ids),
            error=error,
        )


# ---- helpers ---------------------------------------------------------------------------------------

def load_checked(task, model_dir: Path):
    """(contract, tokenizer) of a model folder, after checking its contract against `task` (ContractError names the folder)."""
    from transformers import AutoTokenizer

    from schemabuild.contract import ContractError, check_contract, load_contract

    contract = load_contract(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    try:
        check_contract(contract, task, tokenizer)
    except ContractError as exc:
        raise ContractError(f"{model_dir}: {exc}") from None
    return contract, tokenizer


def inference_model(model, device: str):
    """The model in its serving form: a lone PEFT adapter merged into its base, eval mode, on `device`.

    Merged, a step runs the base's matmuls only (no extra LoRA pair per linear layer). Dynamic int8 quantization
    of the linear layers was tried and dropped: it cut gold tool accuracy from 1.00 to 0.29-0.33 on the
    LoRA-tuned SmolLM2-135M (per-tensor and per-channel alike; BENCHMARKS.md).
    """
    if hasattr(model, "merge_and_unload") and len(getattr(model, "peft_config", {}) or {}) == 1:
        model = model.merge_and_unload()
    return model.to(device).eval()


def _load_causal_lm(path_or_id, device: str):
    """A causal LM from safetensors only, no remote code; bf16 on GPU, fp32 on CPU."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from schemabuild.contract import ContractError

    hf_logging.disable_progress_bar()  # a tiny model loads in milliseconds: no "Loading weights" bar on stderr
    dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    try:
        return AutoModelForCausalLM.from_pretrained(str(path_or_id), dtype=dtype, use_safetensors=True,
                                                    trust_remote_code=False)
    except OSError as exc:
        raise ContractError(f"cannot load model {path_or_id}: {str(exc).splitlines()[0]}") from None


def _adapter_base(model_dir: Path, contract: dict) -> str:
    """The base an adapter was trained on, checked against the hash its contract recorded.

    In order: adapter_config's local path when it exists, the contract's `base_path`, the registry base named by
    `base_model` (fetched and converted again when the cache was cleared), else `base_model` as a hub id or path.
    """
    from schemabuild.bases import REGISTRY_BASES, base_info, registry_base
    from schemabuild.contract import ContractError

    named = None
    cfg = model_dir / "adapter_config.json"
    if cfg.is_file():
        named = json.loads(cfg.read_text()).get("base_model_name_or_path")
    name = contract.get("base_model")
    candidates = [named, contract.get("base_path")]
    base = next((c for c in candidates if c and Path(c).is_dir()), None)
    if base is None and name in REGISTRY_BASES:
        base = str(registry_base(name))
    base = base or named or name
    if not base:
        raise ContractError(f"{model_dir}: an adapter whose base model is not named (contract.json base_model)")
    want, info = contract.get("base_sha256"), base_info(base) if Path(base).is_dir() else None
    if want and info and info.get("weights_sha256") and info["weights_sha256"] != want:
        raise ContractError(f"{model_dir}: the adapter was trained on base weights {want[:12]}, but {base} holds "
                            f"{info['weights_sha256'][:12]}; retrain, or restore the base it was trained on")
    return base


def value_spans(text: str) -> dict[str, tuple[int, int]]:
    """Character span of each top-level field's value in a JSON object text ({} when it is not one)."""
    decoder = json.JSONDecoder()
    spans: dict[str, tuple[int, int]] = {}
    i = 0
    try:
        if not text.startswith("{"):
            return {}
        i = 1
        while i < len(text) and text[i] != "}":
            key, i = decoder.raw_decode(text, i)
            if text[i] != ":":
                return spans
            start = i + 1
            _, i = decoder.raw_decode(text, start)
            spans[str(key)] = (start, i)
            if i < len(text) and text[i] == ",":
                i += 1
    except (ValueError, IndexError):
        pass
    return spans


def field_confidence(tokenizer, result, stop_ids: list[int]) -> dict[str, float]:
    """Per top-level field: product of the probabilities of the tokens overlapping its value's text."""
    ids = [t for t in result.token_ids if t not in stop_ids]
    lps = [lp for t, lp in zip(result.token_ids, result.token_logprobs) if t not in stop_ids]
    spans = value_spans(result.text)
    if not spans:
        return {}
    # Token end offsets from decoding growing prefixes (robust to multi-byte characters split across tokens).
    ends, prev = [], 0
    for k in range(1, len(ids) + 1):
        n = len(tokenizer.decode(ids[:k], skip_special_tokens=False))
        ends.append(max(n, prev))
        prev = ends[-1]
    conf = {}
    for name, (s, e) in spans.items():
        total, start = 0.0, 0
        for end, lp in zip(ends, lps):
            if start < e and end > s:
                total += lp
            start = end
        conf[name] = math.exp(total)
    return conf


def prediction_dict(p: Prediction) -> dict[str, Any]:
    """A Prediction as JSON-ready data."""
    d = dataclasses.asdict(p)
    d["output"] = p.output.model_dump(mode="json") if p.output is not None else None
    return d
