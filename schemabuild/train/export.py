"""Export a trained model: `merged` (the adapter folded into its base, a standalone model) or `vllm` (what vLLM serves,
with the exact launch command printed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from schemabuild.contract import check_contract, grammar_schema, load_contract, save_contract
from schemabuild.models import load_model
from schemabuild.runs import Run

MODEL_FORMATS = ("merged", "vllm")


def export_merged(task, run_dir, out=None) -> Path:
    """Write a standalone full model (adapter merged into the base) + tokenizer + contract.json; returns the folder."""
    run = Run(run_dir)
    out = Path(out) if out else run.export("merged")
    model, tokenizer, contract = load_model(task, run.model, device="cpu", merge=True)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    save_contract({**contract, "adapter": False, "merged_from": str(run.model)}, out)
    print(f"merged model written to {out}")
    return out


def export_vllm(task, run_dir, out=None) -> Path:
    """Write what vLLM serves (the LoRA adapter, or the full model dir) and print the exact launch command."""
    run = Run(run_dir)
    contract = load_contract(run.model)
    check_contract(contract, task)
    out = Path(out) if out else run.export("vllm")
    if out.exists():
        shutil.rmtree(out)
    skip = shutil.ignore_patterns("train_log.jsonl", "train_summary.json", "checkpoint-*")
    shutil.copytree(run.model, out, ignore=skip)
    if contract.get("adapter"):
        r = json.loads((out / "adapter_config.json").read_text())["r"]
        cmd = (f"vllm serve {contract['base_model']} --enable-lora --lora-modules {task.name}={out.resolve()} "
               f"--max-lora-rank {max(8, r)}")
        model_name = task.name
    else:
        cmd = f"vllm serve {out.resolve()} --served-model-name {task.name}"
        model_name = task.name
    schema = json.dumps(grammar_schema(task.output))
    print(f"vLLM files written to {out}\n\n  {cmd}\n")
    print("Request structured outputs (the same schema the model was trained on), e.g. with the openai client:\n"
          f"  client.chat.completions.create(model={model_name!r}, messages=[{{'role': 'system', 'content': <task instructions>}},"
          " {'role': 'user', 'content': <text>}],\n"
          f"      response_format={{'type': 'json_schema', 'json_schema': {{'name': {task.name!r}, 'strict': True, 'schema': {schema}}}}})")
    (out / "VLLM.md").write_text(f"# Serve with vLLM\n\n    {cmd}\n\nresponse_format json_schema schema:\n\n    {schema}\n")
    return out
