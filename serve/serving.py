"""The work behind the routes: sampling settings, the schema a request asks for, prompts, decoding, answers.

The prompt lines (`encode_prompt(..., system_prompt(s.task, s.contract), ...)`) are the contract's; keep them greppable.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from schemabuild.decode import GrammarError, Request as DecodeRequest
from serve.config import ServeConfig
from serve.engine import QueueFull
from serve.errors import APIError, _first_line
from serve.metrics import Metrics
from serve.models import Served
from serve.protocol import ChatMessage, ResponseFormat
from serve.schemas import SchemaRefused, output_violation, prepare_schema
from schemabuild.contract import encode_prompt, student_prompt, system_prompt
from schemabuild.task import TaskError
from schemabuild.predictor import field_confidence


def sampling(cfg: ServeConfig, body, max_tokens: int | None) -> dict:
    """Decode options from a (validated) body; max_tokens above the server's cap is a 400."""
    if max_tokens is None:
        max_tokens = cfg.default_max_tokens
    if max_tokens > cfg.max_tokens_cap:
        raise APIError(400, f"max_tokens: {max_tokens} is above this server's cap of {cfg.max_tokens_cap}",
                       param="max_tokens", code="max_tokens_too_large")
    return {"max_tokens": max_tokens,
            "temperature": 0.0 if body.temperature is None else body.temperature,
            "top_p": 1.0 if body.top_p is None else body.top_p, "seed": body.seed}


async def generate(cfg: ServeConfig, metrics: Metrics, s: Served, prompt_ids: list[int], schema: dict | None,
                   opts: dict, param: str):
    """Decode one request on the task's engine; every failure is an APIError (400, 429, 504)."""
    opts = dict(opts)
    if s.context:
        room = s.context - len(prompt_ids)
        if room < 1:
            raise APIError(400, f"{param}: the prompt is {len(prompt_ids)} tokens; the model's context is "
                                f"{s.context} tokens", param=param, code="context_length_exceeded")
        opts["max_tokens"] = min(opts["max_tokens"], room)  # capped at what fits, as OpenAI-compatible servers do
    req = DecodeRequest(prompt_ids=prompt_ids, schema=schema, adapter=s.adapter, **opts)
    try:
        result = await asyncio.wait_for(s.engine.submit(req), timeout=cfg.request_timeout_s)
    except QueueFull:
        raise APIError(429, "the server is busy (decode queue full); retry shortly", code="queue_full",
                       headers={"Retry-After": "1"}) from None
    except (asyncio.TimeoutError, TimeoutError):
        raise APIError(504, f"no answer within {cfg.request_timeout_s:g} s (--request-timeout-s)",
                       type="timeout_error", code="timeout") from None
    except GrammarError as exc:
        param = "response_format.json_schema.schema"
        raise APIError(400, f"{param}: {_first_line(exc) or 'the schema cannot be compiled'}",
                       param=param, code="invalid_schema") from None
    except ValueError as exc:  # the decoder's own request checks
        raise APIError(400, _first_line(exc) or "invalid request", code="invalid_value") from None
    metrics.add_result(s.task.name, result.prompt_tokens, result.completion_tokens, result.finish_reason)
    return result


def check_output(metrics: Metrics, s: Served, client_schema: dict | None, result) -> None:
    """A finished output that breaks the client's schema is never a 200: 422 schema_violation, counted."""
    if client_schema is None or result.finish_reason != "stop":
        return
    why = output_violation(client_schema, result.text)
    if why is not None:
        metrics.add_violation(s.task.name)
        raise APIError(422, f"the output does not satisfy response_format's schema ({why}); nothing was "
                            "returned", param="response_format", code="schema_violation")


def usage(result) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


def requested_schema(s: Served, fmt: ResponseFormat | None) -> tuple[dict | None, dict | None, list[str]]:
    """What a chat request asks for: (schema to compile, the client's schema to validate against, relaxed keywords).

    No response_format or "text": the task's own grammar schema. "json_object": any JSON object. "json_schema":
    the client's schema as written, after `prepare_schema`'s walk (the all-required rewrite is the task's only).
    """
    if fmt is None or fmt.type == "text":
        return s.schema, None, []
    if fmt.type == "json_object":
        return None, None, []
    spec = fmt.json_schema
    param = "response_format.json_schema.schema"
    if spec is None or spec.schema_ is None:
        raise APIError(400, f"{param}: required when type is json_schema", param=param, code="invalid_schema")
    try:
        schema, relaxed = prepare_schema(spec.schema_, strict=spec.strict is not False)
    except SchemaRefused as exc:
        raise APIError(400, f"{param}: {exc}", param=param, code="invalid_schema") from None
    except RecursionError:
        raise APIError(400, f"{param}: nested too deeply", param=param, code="invalid_schema") from None
    return schema, spec.schema_, relaxed


def chat_prompt_ids(s: Served, messages: list[ChatMessage]) -> list[int]:
    """Prompt ids for chat messages, through the same chat template and tokenization as the contract.

    Without a system (or developer) message, or with one that repeats the task's instructions or student prompt,
    the model's own system prompt (from its contract) is used; another system message replaces it. A lone user
    message then gives exactly `contract.encode_prompt` (byte-identical to training).
    """

    system = [m.text() for m in messages if m.role in ("system", "developer")]
    turns = [m for m in messages if m.role not in ("system", "developer")]
    if not any(m.role == "user" for m in turns):
        raise APIError(400, "messages: needs at least one user message", param="messages", code="invalid_value")
    for i, m in enumerate(messages):
        if m.role == "user" and not m.text().strip():
            raise APIError(400, f"messages[{i}].content: a user message must not be empty",
                           param=f"messages[{i}].content", code="invalid_value")
    given = "\n\n".join(system).strip()
    own = system_prompt(s.task, s.contract)
    instructions = own if not given or given in (s.task.instructions.strip(), student_prompt(s.task)) else given
    if len(turns) == 1:
        return encode_prompt(s.tokenizer, instructions, turns[0].text())
    convo = [{"role": "system", "content": instructions}] + [{"role": m.role, "content": m.text()} for m in turns]
    text = s.tokenizer.apply_chat_template(convo, tokenize=False, add_generation_prompt=True)
    return s.tokenizer(text, add_special_tokens=False)["input_ids"]


def task_output(s: Served, result, max_tokens: int):
    """The task's output model instance from a result; 422 when the JSON was cut off or does not validate."""

    try:
        return s.task.validate_output(result.text)
    except TaskError as exc:
        if result.finish_reason == "length":
            raise APIError(422, f"max_tokens: the output was cut off at {max_tokens} tokens before the JSON was "
                                "complete; raise max_tokens", param="max_tokens", code="output_truncated") from None
        raise APIError(422, f"the model's output does not validate: {exc}", code="invalid_output") from None


def confidence(s: Served, result) -> dict[str, float]:
    """Per top-level field: the probability the model gave that field's value (see predictor.field_confidence)."""

    return {k: round(v, 6) for k, v in field_confidence(s.tokenizer, result, s.decoder.stop_ids).items()}


def logprobs(s: Served, result) -> dict:
    content = []
    for tid, lp in zip(result.token_ids, result.token_logprobs):
        token = s.tokenizer.decode([tid])
        content.append({"token": token, "logprob": lp, "bytes": list(token.encode()), "top_logprobs": []})
    return {"content": content, "refusal": None}


async def sse(completion: dict, include_usage: bool):
    """The finished completion as OpenAI chat.completion.chunk events (role, content, finish, [usage], DONE)."""
    base = {k: completion[k] for k in ("id", "created", "model", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"
    choice = completion["choices"][0]
    events = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {"content": choice["message"]["content"]}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]},
    ]
    if include_usage:
        events.append({**base, "choices": [], "usage": completion["usage"]})
    for event in events:
        yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
    yield "data: [DONE]\n\n"
