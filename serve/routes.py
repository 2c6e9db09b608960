"""The HTTP routes, at module level: each reads what is served from `request.app.state` (set by create_app)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel

from schemabuild.serve.errors import APIError
from schemabuild.serve.served import Served
from schemabuild.serve.bodies import ChatRequest, PredictRequest, parse_body
from schemabuild.serve.requestlog import log_row
from schemabuild.serve.serving import (chat_prompt_ids, check_output, confidence, generate, logprobs, open_stream,
                           requested_schema, sampling, stream_chunks, task_output, usage)
from schemabuild.contract import encode_prompt, system_prompt

STATIC = Path(__file__).parent / "static"

router = APIRouter()


def lookup(request: Request, name: str, param: str) -> Served:
    served = request.app.state.served
    s = served.get(name)
    if s is None:
        raise APIError(404, f"the {param} {name!r} does not exist; this server serves: {', '.join(sorted(served))}",
                       type="invalid_request_error", param=param, code="model_not_found")
    return s


async def read(request: Request, model: type[BaseModel]):
    return parse_body(await request.body(), model)


def model_card(request: Request, name: str) -> dict:
    s = request.app.state.served[name]
    return {"id": name, "object": "model", "created": request.app.state.created, "owned_by": "schemabuild",
            "base_model": s.contract.get("base_model"), "adapter": s.adapter is not None,
            "schema": s.task.output.model_json_schema()}


@router.get("/", include_in_schema=False)
async def playground():
    # The page itself holds no data and is public; every call it makes sends the key the user types in.
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/healthz")
async def healthz(request: Request):
    return {"status": "ok", "models": sorted(request.app.state.served)}


@router.get("/metrics", include_in_schema=False)
async def metrics_route(request: Request):
    state = request.app.state
    return PlainTextResponse(state.metrics.render(state.engines), media_type="text/plain; version=0.0.4")


@router.get("/v1/models")
async def list_models(request: Request):
    return {"object": "list", "data": [model_card(request, n) for n in sorted(request.app.state.served)]}


@router.get("/v1/models/{model}")
async def get_model(model: str, request: Request):
    lookup(request, model, "model")
    return model_card(request, model)


@router.post("/v1/tasks/{task}/predict")
async def predict(task: str, request: Request):

    state = request.app.state
    s = lookup(request, task, "task")
    body = await read(request, PredictRequest)
    opts = sampling(state.cfg, body, body.max_tokens)
    start = time.perf_counter()
    prompt_ids = encode_prompt(s.tokenizer, system_prompt(s.task, s.contract), body.input)
    result = await generate(state.cfg, state.metrics, s, prompt_ids, s.schema, opts, "input")
    latency_ms = (time.perf_counter() - start) * 1000
    output = task_output(s, result, opts["max_tokens"])
    if state.request_log is not None:  # before the answer leaves, so no answer is missing from the log
        messages = [{"role": "system", "content": system_prompt(s.task, s.contract)},
                    {"role": "user", "content": body.input}]
        state.request_log.write(log_row("predict", s.task.name, messages, result.text, result))
    return {"output": output.model_dump(mode="json"), "latency_ms": round(latency_ms, 2),
            "finish_reason": result.finish_reason, "usage": usage(result), "confidence": confidence(s, result)}


def _refuse_unsupported(body: ChatRequest) -> None:
    if body.n not in (None, 1):
        raise APIError(400, "n: only n=1 is supported", param="n", code="unsupported_value")
    if body.stop not in (None, [], ""):
        raise APIError(400, "stop: stop sequences are not supported (output ends where the JSON ends)",
                       param="stop", code="unsupported_value")
    if body.tools:
        raise APIError(400, "tools: tool calling is not supported; use response_format", param="tools",
                       code="unsupported_value")
    if body.max_tokens is not None and body.max_completion_tokens is not None \
            and body.max_tokens != body.max_completion_tokens:
        raise APIError(400, "max_tokens and max_completion_tokens disagree; give one", param="max_tokens",
                       code="invalid_value")


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    state = request.app.state
    body = await read(request, ChatRequest)
    s = lookup(request, body.model, "model")
    _refuse_unsupported(body)
    opts = sampling(state.cfg, body, body.max_completion_tokens or body.max_tokens)
    schema, client_schema, relaxed = requested_schema(s, body.response_format)
    prompt_ids = chat_prompt_ids(s, body.messages)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": s.task.name,
            "system_fingerprint": s.contract.get("schema_hash")}
    # strict: false dropped keywords the engine cannot enforce; say which (the body stays OpenAI's shape).
    headers = {"X-Schemabuild-Relaxed": ",".join(relaxed)} if relaxed else None

    def log(result) -> None:  # before the answer leaves, so no answer is missing from the log
        if state.request_log is not None:
            messages = [{"role": m.role, "content": m.text()} for m in body.messages]
            fmt = body.response_format.model_dump(by_alias=True, exclude_none=True) if body.response_format else None
            state.request_log.write(log_row("chat", s.task.name, messages, result.text, result, head["id"], fmt))

    if body.stream:
        job = await open_stream(state.cfg, s, prompt_ids, schema, opts, "messages")
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = stream_chunks(state.cfg, state.metrics, s, job, head, include_usage, client_schema, log)
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", **(headers or {})})
    result = await generate(state.cfg, state.metrics, s, prompt_ids, schema, opts, "messages")
    check_output(state.metrics, s, client_schema, result)
    completion = {
        **head, "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text, "refusal": None},
                     "logprobs": logprobs(s, result) if body.logprobs else None,
                     "finish_reason": result.finish_reason}],
        "usage": usage(result),
    }
    log(result)
    if headers:
        from fastapi.responses import JSONResponse

        return JSONResponse(completion, headers=headers)
    return completion
