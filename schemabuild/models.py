"""The one loader: a model folder (full weights or a PEFT adapter on its base), a bare base, adapters sharing one base.

    model, tokenizer, contract = load_model(task, run.model)              # what predict, eval and serve run
    model, tokenizer, contract = load_model(task, run.model, merge=True)  # what `export --format merged` writes
    model, tokenizer, contract = load_base(task, "HuggingFaceTB/SmolLM2-135M-Instruct")   # eval --compare base
    model = load_adapters(base, [("task_a", dir_a), ("task_b", dir_b)], device)          # serve: one base copy

Every folder's contract.json is checked against the task before any weights load; weights load from safetensors
only and never run a model's own code. bf16 on GPU, fp32 on CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

from schemabuild.contract import build_contract, check_contract, load_contract
from schemabuild.errors import ContractError, TaskError


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
    """The base an adapter was trained on: adapter_config's local path when it exists, else contract["base_model"]."""
    cfg = Path(model_dir) / "adapter_config.json"
    if cfg.is_file():
        named = json.loads(cfg.read_text()).get("base_model_name_or_path")
        if named and (Path(named).is_dir() or not Path(contract.get("base_model", "")).is_dir()):
            return named
    base = contract.get("base_model")
    if not base:
        raise ContractError(f"{model_dir}: an adapter whose base model is not named (contract.json base_model)")
    return base


def is_adapter(model_dir, contract: dict) -> bool:
    return bool(contract.get("adapter")) or (Path(model_dir) / "adapter_config.json").is_file()


def load_model(task, model_dir, device=None, merge: bool = False):
    """(model, tokenizer, contract) of a trained model folder, on `device`, in eval mode.

    An adapter loads onto its base; `merge` folds it in (a plain model, as `export --format merged` writes).
    """
    model_dir = Path(model_dir)
    contract, tokenizer = load_checked(task, model_dir)
    device = resolve_device(device)
    if contract.get("adapter"):
        model = load_adapters(adapter_base(model_dir, contract), [(None, model_dir)], device)
        if merge:
            model = model.merge_and_unload()
    else:
        model = load_causal_lm(model_dir, device)
    return model.to(device).eval(), tokenizer, contract


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


def load_adapters(base, adapters: list, device: str):
    """One copy of `base` carrying each (name, adapter folder) as a named PEFT adapter (name None: the default)."""
    from peft import PeftModel

    (name, first), rest = adapters[0], adapters[1:]
    kw = {"adapter_name": name} if name else {}
    model = PeftModel.from_pretrained(load_causal_lm(base, device), str(first), **kw)
    for other, folder in rest:
        model.load_adapter(str(folder), adapter_name=other)
    return model.to(device).eval()
