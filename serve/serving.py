"""The work behind the routes: sampling settings, the schema a request asks for, prompts, decoding, answers.

The prompt lines (`encode_prompt(..., system_prompt(s.task, s.contract), ...)`) are the contract's; keep them greppable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from schemabuild.errors import GrammarError
from schemabuild.inference.request import Request as DecodeRequest
from schemabuild.inference.task_model import PromptTooLong
from schemabuild.serve.bodies import ChatMessage, ResponseFormat
from schemabuild.serve.config import ServeConfig
from schemabuild.serve.engine import QueueFull
from schemabuild.serve.errors import APIError, first_line
from schemabuild.serve.metrics import Metrics
from schemabuild.serve.schemas import SchemaRefused, output_violation, prepare_schema
from schemabuild.serve.served import Served
from schemabuild.task import TaskError


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


def decode_request(s: Served, prompt_ids: list[int], schema: dict | None, opts: dict, param: str) -> DecodeRequest:
    """The decoder's request; a prompt longer than the model's context is a 400, max_tokens is capped to fit."""
    try:
        return s.model.request(prompt_ids, schema=schema, **opts)
    except PromptTooLong as exc:
        raise APIError(400, f"{param}: {exc}", param=param, code="context_length_exceeded") from None


def timeout_message(cfg: ServeConfig) -> str:
    return (f"no progress for {cfg.request_timeout_s:g} s (--request-timeout-s: the most a request waits in the "
            "queue, or between two decode steps once it runs)")


@contextlib.contextmanager
def _engine_errors(cfg: ServeConfig):
    """The engine's refusals as APIErrors (400, 429, 504)."""
    try:
        yield
    except QueueFull as exc:
        raise APIError(429, f"the server is busy ({exc}); retry shortly", code=exc.code,
                       headers={"Retry-After": "1"}) from None
    except (asyncio.TimeoutError, TimeoutError):
        raise APIError(504, timeout_message(cfg), type="timeout_error", code="timeout") from None
    except GrammarError as exc:
        param = "response_format.json_schema.schema"
        raise APIError(400, f"{param}: {first_line(exc) or 'the schema cannot be compiled'}",
                       param=param, code="invalid_schema") from None
    except ValueError as exc:  # the decoder's own request checks
        raise APIError(400, first_line(exc) or "invalid request", code="invalid_value") from None


async def generate(cfg: ServeConfig, metrics: Metrics, s: Served, prompt_ids: list[int], schema: dict | None,
                   opts: dict, param: str):
    """Decode one request on the task's engine; every failure is an APIError (400, 429, 504)."""
    req = decode_request(s, prompt_ids, schema, opts, param)
    with _engine_errors(cfg):
        result = await s.engine.submit(req, idle_timeout_s=cfg.request_timeout_s)
    metrics.add_result(s.task.name, result.prompt_tokens, result.completion_tokens, result.finish_reason)
    return result


async def open_stream(cfg: ServeConfig, s: Served, prompt_ids: list[int], schema: dict | None, opts: dict,
                      param: str):
    """Admit one streaming request (the 400s and 429s are still real HTTP statuses); returns the engine's Job."""
    req = decode_request(s, prompt_ids, schema, opts, param)
    with _engine_errors(cfg):
        return await asyncio.wait_for(s.engine.enqueue(req, stream=True), timeout=cfg.request_timeout_s)


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
        schema, relaxed = prepare_schema(spec.schema_, strict=spec.strict is not False,
                                         engine=s.decoder.grammars.name)
    except SchemaRefused as exc:
        raise APIError(400, f"{param}: {exc}", param=param, code="invalid_schema") from None
    except RecursionError:
        raise APIError(400, f"{param}: nested too deeply", param=param, code="invalid_schema") from None
    return schema, spec.schema_, relaxed


def chat_prompt_ids(s: Served, messages: list[ChatMessage]) -> list[int]:
    """Prompt ids for chat messages, through the contract's chat template (`TaskModel.prompt_ids`).

    Without a system (or developer) message, or with one that repeats the task's instructions or student prompt,
    the model's own system prompt (from its contract) is used; another system message replaces it. A lone user
    message then gives exactly `contract.encode_prompt` (byte-identical to training).
    """
    system = [m.text() for m in messages if m.role in ("system", "developer")]
    turns = [{"role": m.role, "content": m.text()} for m in messages if m.role not in ("system", "developer")]
    if not any(t["role"] == "user" for t in turns):
        raise APIError(400, "messages: needs at least one user message", param="messages", code="invalid_value")
    for i, m in enumerate(messages):
        if m.role == "user" and not m.text().strip():
            raise APIError(400, f"messages[{i}].content: a user message must not be empty",
                           param=f"messages[{i}].content", code="invalid_value")
    return s.model.prompt_ids(turns, system="\n\n".join(system))


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
    """Per top-level field: the probability the model gave that field's value (`TaskModel.confidence`)."""
    return {k: round(v, 6) for k, v in s.model.confidence(result).items()}


def logprobs(s: Served, result) -> dict:
    content = []
    for tid, lp in zip(result.token_ids, result.token_logprobs):
        token = s.tokenizer.decode([tid])
        content.append({"token": token, "logprob": lp, "bytes": list(token.encode()), "top_logprobs": []})
    return {"content": content, "refusal": None}


def _event(data) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def stream_chunks(cfg: ServeConfig, metrics: Metrics, s: Served, job, head: dict, include_usage: bool,
                        client_schema: dict | None, on_answer=None):
    """SSE events of one streaming completion, sent as they are decoded: a first chunk with the role, one
    content chunk per decode step (or jump-forward span), the last with finish_reason, a usage chunk when
    asked, then [DONE].

    A stream that cannot finish properly ends with an OpenAI-style error event (`data: {"error": {...}}`, which
    the openai client raises as an APIError) and then [DONE], never with finish_reason: a timeout, a decode
    failure, or (strict mode) a finished output that breaks the client's schema, which is checked at the end
    exactly as for a non-streaming answer. `on_answer(result)` runs (the request log) before the finish chunk.
    A client that disconnects cancels its sequence, which leaves the batch at the next step.
    """
    base = {**head, "object": "chat.completion.chunk"}

    def chunk(delta: dict, finish: str | None = None) -> str:
        return _event({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    def error(exc: APIError) -> str:
        return _event({"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}})

    stop_ids = set(s.decoder.stop_ids)
    ids: list[int] = []
    sent = ""
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            try:
                # every decode step of this request sends a delta: a gap this long is a request without progress
                new = await asyncio.wait_for(job.deltas.get(), timeout=cfg.request_timeout_s)
            except (asyncio.TimeoutError, TimeoutError):
                job.cancel()
                yield error(APIError(504, timeout_message(cfg), type="timeout_error", code="timeout"))
                yield "data: [DONE]\n\n"
                return
            if new is None:
                break
            ids += [t for t in new if t not in stop_ids]
            text = s.tokenizer.decode(ids, skip_special_tokens=False)
            if text.endswith("\ufffd") or not text.startswith(sent):  # a character split across tokens: wait
                continue
            if len(text) > len(sent):
                yield chunk({"content": text[len(sent):]})
                sent = text
        try:
            result = job.future.result()
        except Exception as exc:  # noqa: BLE001 - the engine's decode failure
            yield error(APIError(500, f"decoding failed: {first_line(exc) or type(exc).__name__}",
                                 type="server_error", code="decode_failed"))
            yield "data: [DONE]\n\n"
            return
        metrics.add_result(s.task.name, result.prompt_tokens, result.completion_tokens, result.finish_reason)
        try:
            check_output(metrics, s, client_schema, result)
        except APIError as exc:
            yield error(exc)
            yield "data: [DONE]\n\n"
            return
        if result.text.startswith(sent) and len(result.text) > len(sent):
            yield chunk({"content": result.text[len(sent):]})
        if on_answer is not None:
            on_answer(result)
        yield chunk({}, result.finish_reason)
        if include_usage:
            yield _event({**base, "choices": [], "usage": usage(result)})
        yield "data: [DONE]\n\n"
    finally:
        if not job.future.done():  # the client left (or the stream failed): free the sequence's slot
            job.cancel()
