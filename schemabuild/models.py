"""The one loader: a model folder (full weights or a PEFT adapter on its base), a bare base, adapters sharing one base.

    model, tokenizer, contract = load_model(task, run.model, merge=False) # an adapter stays a PeftModel
    model, tokenizer, contract = load_model(task, run.model)              # merged: what serve and export run
    model, tokenizer, contract = load_base(task, "HuggingFaceTB/SmolLM2-135M-Instruct")   # eval --compare base
    model = load_adapters(base, [("task_a", dir_a), ("task_b", dir_b)], device)          # serve: one base copy
    engine, tokenizer, contract = load_llamacpp(task, run.model, gguf_file)   # --engine llamacpp: llama.cpp's pass

Every folder's contract.json is checked against the task before any weights load; weights load from safetensors
only and never run a model's own code. bf16 on GPU, fp32 on CPU, unless `precision` says otherwise (precision.py:
fp32 / bf16 / int8 / auto, applied after any merge; None keeps the load dtype).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from schemabuild.bases import REGISTRY_BASES, base_info, registry_base
from schemabuild.contract import build_contract, check_contract, load_contract
from schemabuild.errors import ConfigError, ContractError, TaskError
from schemabuild.inference.llamacpp import LlamaCppForward, llama_api
from schemabuild.precision import Precision, apply_precision, choose_precision
from schemabuild.runs import Run


def resolve_device(device=None) -> str:
    """`device` if given, else cuda when available, else cpu."""
    import torch

    if device:
        return str(device)
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_checked(task, model_dir):
    """(contract, tokenizer) of a model folder, after checking its contract against `task` (ContractError names the folder)."""
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    contract = load_contract(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    try:
        check_contract(contract, task, tokenizer)
    except ContractError as exc:
        raise ContractError(f"{model_dir}: {exc}") from None
    return contract, tokenizer


def load_causal_lm(path_or_id, device: str):
    """A causal LM from safetensors only, no remote code; bf16 on GPU, fp32 on CPU."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a tiny model loads in milliseconds: no "Loading weights" bar on stderr
    dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    try:
        return AutoModelForCausalLM.from_pretrained(str(path_or_id), dtype=dtype, use_safetensors=True,
                                                    trust_remote_code=False)
    except OSError as exc:
        raise ContractError(f"cannot load model {path_or_id}: {str(exc).splitlines()[0]}") from None


def adapter_base(model_dir, contract: dict) -> str:
    """The base an adapter was trained on, checked against the hash its contract recorded.

    In order: adapter_config's local path when it exists, the contract's `base_path`, the registry base named by
    `base_model` (fetched and converted again when the cache was cleared), else `base_model` as a hub id or path.
    """
    named = None
    cfg = Path(model_dir) / "adapter_config.json"
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


def is_adapter(model_dir, contract: dict) -> bool:
    return bool(contract.get("adapter")) or (Path(model_dir) / "adapter_config.json").is_file()


def load_model(task, model_dir, device=None, merge: bool = True, precision: str | Precision | None = None):
    """(model, tokenizer, contract) of a trained model folder, on `device`, in eval mode.

    An adapter loads onto its base and, with `merge` (the default: the serving form, and what `export --format
    merged` writes), is folded into it; then its weights take `precision` (None: as loaded).
    """
    model_dir = Path(model_dir)
    contract, tokenizer = load_checked(task, model_dir)
    device = resolve_device(device)
    if contract.get("adapter"):
        model = load_adapters(adapter_base(model_dir, contract), [(None, model_dir)], device)
    else:
        model = load_causal_lm(model_dir, device)
    model = inference_model(model, device) if merge else model.to(device).eval()
    return with_precision(model, device, precision), tokenizer, contract


def with_precision(model, device: str, precision: str | Precision | None):
    """`model` in `precision` (a name is resolved for `device` first); None leaves it as loaded."""
    if precision is None:
        return model
    choice = precision if isinstance(precision, Precision) else choose_precision(precision, device)
    return apply_precision(model, choice).eval()


def inference_model(model, device: str):
    """The model in its serving form: a lone PEFT adapter merged into its base, eval mode, on `device`.

    Merged, a step runs the base's matmuls only (no extra LoRA pair per linear layer); int8 (precision.py) is
    applied after the merge, so the LoRA update is quantized with the weights it was folded into.
    """
    if hasattr(model, "merge_and_unload") and len(getattr(model, "peft_config", {}) or {}) == 1:
        model = model.merge_and_unload()
    return model.to(device).eval()


def load_llamacpp(task, model_dir, gguf_file=None, rows: int = 32, prefixes: int = 8, threads: int | None = None):
    """(llama.cpp engine, tokenizer, contract) of a model folder whose merged weights `gguf_file` holds (default: the
    run's `Run.serving_gguf`, which the entry points write first: `train.serving_gguf`); its vocabulary is checked
    against the model's. Prints which engine and file serve it. `rows`, `prefixes`, `threads`: see
    `LlamaCppForward`."""
    llama_api()  # the install hint before anything loads
    contract, tokenizer = load_checked(task, model_dir)
    gguf_file = Path(gguf_file) if gguf_file else Run(Path(model_dir).parent).serving_gguf(task.name)
    if not gguf_file.is_file():
        raise ConfigError(f"--engine llamacpp: no GGUF at {gguf_file} (serve, predict and eval write it; or run "
                          f"`schemabuild export {task.name} --format gguf --out {gguf_file}`)")
    engine = LlamaCppForward(gguf_file, model_vocab_size(model_dir, contract), rows=rows, prefixes=prefixes,
                             threads=threads)
    print(engine.describe(), file=sys.stderr, flush=True)
    return engine, tokenizer, contract


def model_vocab_size(model_dir, contract: dict) -> int:
    """The vocabulary size in the model's config (its base's, for an adapter)."""
    model_dir = Path(model_dir)
    folder = Path(adapter_base(model_dir, contract)) if is_adapter(model_dir, contract) else model_dir
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(folder, trust_remote_code=False).vocab_size)


def load_base(task, base_dir_or_id, device=None):
    """(model, tokenizer, contract) of an un-fine-tuned base (for `eval --compare base`): the contract it gets says
    "full" prompt, since the base never saw the student prompt."""
    from transformers import AutoTokenizer

    device = resolve_device(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(base_dir_or_id), trust_remote_code=False)
    except OSError as exc:
        raise TaskError(f"base model {base_dir_or_id}: cannot load its tokenizer ({str(exc).splitlines()[0]})") from None
    contract = build_contract(task, tokenizer, base_model=str(base_dir_or_id), prompt="full", adapter=False)
    return load_causal_lm(base_dir_or_id, device).to(device).eval(), tokenizer, contract


def load_adapters(base, adapters: list, device: str, precision: str | Precision | None = None):
    """One copy of `base` carrying each (name, adapter folder) as a named PEFT adapter (name None: the default);
    `precision` applies to the base's linears (int8 keeps the adapters' own matrices in fp32)."""
    from peft import PeftModel

    (name, first), rest = adapters[0], adapters[1:]
    kw = {"adapter_name": name} if name else {}
    model = PeftModel.from_pretrained(load_causal_lm(base, device), str(first), **kw)
    for other, folder in rest:
        model.load_adapter(str(folder), adapter_name=other)
    return with_precision(model.to(device).eval(), device, precision)
