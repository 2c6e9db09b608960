"""The one train/serve contract: prompt, target, grammar settings and `contract.json`.

Training, evaluation and serving import these functions and nothing else to turn a task input into
tokens, so all three see byte-identical prompts and targets.

- Prompt: the tokenizer's chat template over [system = the system prompt, user = input], generation prompt
  on. A fine-tuned model's system prompt is the task's short *student prompt* (`student_prompt`): it learnt the
  task from the data, so the whole instruction text on every request would only cost compute (~5x the tokens of
  a tool_picker row). Un-tuned bases (`eval --compare base`) and teachers get the full instructions.
  `contract.json` records which one a model was trained with, and every prompt is built from that record.
- Target: the canonical JSON of the output object (keys in the model's field order, compact separators,
  every key present with null for missing optionals, non-ASCII kept), then the end-of-turn token.
- Grammar: the output model's JSON schema with every property required and no extra properties, compiled
  with compact whitespace, so the decoder allows exactly the format the model was trained on.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from schemabuild import __version__
from schemabuild.errors import ContractError  # noqa: F401 - re-exported: `from schemabuild.contract import ContractError`

if TYPE_CHECKING:
    from schemabuild.task import Task

CONTRACT_VERSION = 2  # 2: the system prompt (student or full) is part of the contract
CONTRACT_FILE = "contract.json"
# One rule for the JSON text everywhere (training target, grammar, eval, serving).
CANONICAL = {"separators": [",", ":"], "key_order": "model", "nulls": "explicit", "ensure_ascii": False}
# What the grammar engine is told; follows from CANONICAL.
GRAMMAR = {"any_whitespace": False, "separators": [",", ":"], "all_keys_required": True, "strict": True}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---- text side -------------------------------------------------------------------------------------

def canonical_json(value: BaseModel | dict | list | Any) -> str:
    """The one JSON text for an output: field order, compact, explicit nulls, UTF-8."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def student_prompt(task: "Task") -> str:
    """The short system line fine-tuned models are trained and served with: `Task.student_prompt`, else derived."""
    return task.student_prompt or f"Task: {task.name}. Reply with the JSON only."


def system_prompt(task: "Task", contract: dict | None = None) -> str:
    """The system text a model sees: what its contract recorded; the full instructions without a contract."""
    if contract is not None and contract.get("prompt") == "student":
        return contract["system_prompt"]
    return task.instructions


def messages(instructions: str, text: str | list[dict]) -> list[dict]:
    """The prompt messages: system = the system prompt (student line or task instructions), user = input (or, for a
    multi-turn chat, its user and assistant turns as {"role", "content"} dicts)."""
    turns = [{"role": "user", "content": text}] if isinstance(text, str) else list(text)
    return [{"role": "system", "content": instructions}] + turns


def chat_row(task: "Task", text: str, output: BaseModel | dict) -> dict:
    """One training row in the OpenAI chat fine-tuning format."""
    out = output if isinstance(output, BaseModel) else task.validate_output(output)
    return {"messages": messages(task.instructions, text) + [{"role": "assistant", "content": canonical_json(out)}]}


def split_chat_row(row: dict) -> tuple[str, str, str]:
    """(instructions, input, target JSON) from a chat row as written by `chat_row`."""
    msgs = row["messages"]
    by_role = {m["role"]: m["content"] for m in msgs}
    return by_role.get("system", ""), by_role["user"], by_role["assistant"]


# ---- grammar side ----------------------------------------------------------------------------------

def grammar_schema(schema: dict | type[BaseModel]) -> dict:
    """The schema the decoder compiles: every object property required, no additional properties.

    Canonical JSON always writes every key (nulls explicit), so the grammar must demand them too;
    otherwise the decoder could end an object early in a shape the model never saw.
    """
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        schema = schema.model_json_schema()
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" or "properties" in node:
                props = node.get("properties", {})
                if props:
                    node["required"] = list(props)
                    node.setdefault("additionalProperties", False)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    return schema


def schema_hash(schema: dict | type[BaseModel]) -> str:
    return sha(json.dumps(grammar_schema(schema), sort_keys=True))


# ---- token side ------------------------------------------------------------------------------------

def render_prompt(tokenizer, instructions: str, text: str | list[dict]) -> str:
    """The chat-templated prompt text, generation prompt on (`text`: the input, or a chat's turns)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ContractError(
            "the tokenizer has no chat template; use an instruct model, `--base tiny`, or set tokenizer.chat_template"
        )
    return tokenizer.apply_chat_template(messages(instructions, text), tokenize=False, add_generation_prompt=True)


def end_of_turn(tokenizer) -> tuple[str, list[int]]:
    """The end-of-turn token text the chat template writes after an assistant message, and the stop ids.

    The stop ids are that token plus the tokenizer's EOS, deduplicated, end-of-turn first.
    """
    probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    marker = "\u2063MARK\u2063"
    prompt = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(probe + [{"role": "assistant", "content": marker}], tokenize=False)
    suffix = full[full.index(marker, len(prompt) - 1) + len(marker):] if marker in full else ""
    eot_text = None
    specials = sorted(tokenizer.all_special_tokens + list(getattr(tokenizer, "added_tokens_encoder", {})), key=len, reverse=True)
    for tok in specials:
        if tok and suffix.lstrip().startswith(tok):
            eot_text = tok
            break
    if eot_text is None:
        if tokenizer.eos_token is None:
            raise ContractError("cannot find the end-of-turn token: the chat template writes none and there is no eos_token")
        eot_text = tokenizer.eos_token
    ids = [tokenizer.convert_tokens_to_ids(eot_text)]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return eot_text, ids


def encode_prompt(tokenizer, instructions: str, text: str | list[dict]) -> list[int]:
    """Prompt token ids, exactly as training saw them."""
    return tokenizer(render_prompt(tokenizer, instructions, text), add_special_tokens=False)["input_ids"]


def prompt_prefix(tokenizer, instructions: str) -> list[int]:
    """Token ids of the prompt up to the user's text (system prompt and template): what every prompt with these
    instructions starts with, unless a BPE merge crosses the boundary (check with `shared_prefix_len`)."""
    marker = "\u2063USER\u2063"
    text = render_prompt(tokenizer, instructions, marker)
    return tokenizer(text[: text.index(marker)], add_special_tokens=False)["input_ids"]


def shared_prefix_len(prefix: list[int], prompt_ids: list[int]) -> int:
    """len(prefix) when `prompt_ids` starts with exactly those ids (and goes on past them), else 0."""
    n = len(prefix)
    return n if 0 < n < len(prompt_ids) and list(prompt_ids[:n]) == list(prefix) else 0


def encode_target(tokenizer, target_json: str) -> list[int]:
    """Target token ids: the canonical JSON, then the end-of-turn token (which is trained)."""
    _, stop_ids = end_of_turn(tokenizer)
    return tokenizer(target_json, add_special_tokens=False)["input_ids"] + [stop_ids[0]]


def encode_example(tokenizer, instructions: str, text: str, target_json: str) -> dict[str, list[int]]:
    """`input_ids` and `completion_mask` (1 on target tokens, end-of-turn included) for one training row."""
    p = encode_prompt(tokenizer, instructions, text)
    t = encode_target(tokenizer, target_json)
    return {"input_ids": p + t, "completion_mask": [0] * len(p) + [1] * len(t)}


# ---- contract.json ---------------------------------------------------------------------------------

def build_contract(task: "Task", tokenizer, base_model: str, prompt: str = "student", **extra: Any) -> dict:
    """The contract of a model: `prompt` is "student" for fine-tuned models, "full" for un-tuned bases."""
    if prompt not in ("student", "full"):
        raise ValueError(f"prompt must be 'student' or 'full', got {prompt!r}")
    eot_text, stop_ids = end_of_turn(tokenizer)
    system = student_prompt(task) if prompt == "student" else task.instructions
    return {
        "contract_version": CONTRACT_VERSION,
        "task": task.name,
        "schema_hash": schema_hash(task.output),
        "instructions_hash": sha(task.instructions),
        "prompt": prompt,
        "system_prompt": system,
        "chat_template_hash": sha(tokenizer.chat_template or ""),
        "end_of_turn": eot_text,
        "stop_ids": stop_ids,
        "canonical_json": CANONICAL,
        "grammar": GRAMMAR,
        "base_model": base_model,
        "schemabuild_version": __version__,
        **extra,
    }


def save_contract(contract: dict, model_dir) -> None:
    from pathlib import Path

    Path(model_dir, CONTRACT_FILE).write_text(json.dumps(contract, indent=2) + "\n")


def load_contract(model_dir) -> dict:
    from pathlib import Path

    path = Path(model_dir, CONTRACT_FILE)
    if not path.is_file():
        raise ContractError(f"{path} is missing: not a schemabuild model directory (train one with `schemabuild train`)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ContractError(f"{path}: not valid JSON ({exc.msg})") from None


def check_contract(contract: dict, task: "Task", tokenizer=None) -> None:
    """Raise ContractError naming the first mismatch between a model's contract and the task/tokenizer."""
    if contract.get("contract_version") != CONTRACT_VERSION:
        raise ContractError(f"contract version {contract.get('contract_version')} != {CONTRACT_VERSION}; retrain the model")
    if contract.get("task") != task.name:
        raise ContractError(f"model was trained for task {contract.get('task')!r}, not {task.name!r}")
    if contract.get("schema_hash") != schema_hash(task.output):
        raise ContractError(
            f"task {task.name!r}: the output schema changed since this model was trained; retrain with `schemabuild train {task.name}`"
        )
    if contract.get("instructions_hash") != sha(task.instructions):
        raise ContractError(
            f"task {task.name!r}: the instructions changed since this model was trained; retrain with `schemabuild train {task.name}`"
        )
    if contract.get("prompt") == "student" and contract.get("system_prompt") != student_prompt(task):
        raise ContractError(
            f"task {task.name!r}: the student prompt changed since this model was trained "
            f"({contract.get('system_prompt')!r} -> {student_prompt(task)!r}); retrain with `schemabuild train {task.name}`"
        )
    if contract.get("prompt") not in ("student", "full"):
        raise ContractError(f"contract prompt {contract.get('prompt')!r} is neither 'student' nor 'full'; retrain the model")
    if contract.get("canonical_json") != CANONICAL or contract.get("grammar") != GRAMMAR:
        raise ContractError("model was trained with other canonical-JSON or grammar settings; retrain it")
    if tokenizer is not None:
        if contract.get("chat_template_hash") != sha(tokenizer.chat_template or ""):
            raise ContractError("the tokenizer's chat template differs from the one the model was trained with")
        _, stop_ids = end_of_turn(tokenizer)
        if list(contract.get("stop_ids", [])) != stop_ids:
            raise ContractError(f"end-of-turn ids {stop_ids} differ from the trained {contract.get('stop_ids')}")
