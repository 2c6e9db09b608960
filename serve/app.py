"""The HTTP app: OpenAI-compatible chat completions, a predict route, models, health, metrics, playground.

    schemabuild serve tool_picker [--run DIR] [--host 127.0.0.1] [--port 8000] [--api-key KEY]

setup (load each task's model, check its contract, share one base among PEFT adapters) → run (FastAPI
on uvicorn; requests go through the decoder's batching Engine) → nothing to save.

Heavy imports (torch, transformers, peft, fastapi, uvicorn, the decoder) stay inside functions: the CLI
imports this module at startup for `ServeConfig`.
"""

import asyncio
import contextlib
import dataclasses
import hmac
import json
import os
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemabuild.config import ConfigError

STATIC = Path(__file__).parent / "static"


@dataclasses.dataclass
class ServeConfig:
    """Settings of `schemabuild serve` (each field is a CLI flag)."""

    host: str = "127.0.0.1"
    """Address to bind (loopback by default; anything else exposes the API to the network)."""
    port: int = 8000
    """Port to listen on."""
    run: str | None = None
    """Run directory or run id to serve (only with one task) [default: each task's latest run]."""
    api_key: str | None = None
    """Require `Authorization: Bearer KEY` on every route but /healthz [default: $SCHEMABUILD_API_KEY]."""
    max_body_bytes: int = 1_000_000
    """Largest request body accepted (413 above)."""
    max_tokens_cap: int = 1024
    """Largest max_tokens a request may ask for (400 above)."""
    default_max_tokens: int = 256
    """max_tokens when a request gives none."""
    request_timeout_s: float = 60.0
    """Seconds a request may wait for its answer (504 after)."""
    max_queue: int = 256
    """Requests waiting for the decoder at most; more get 429 with Retry-After."""
    max_batch: int = 32
    """Requests decoded together at most."""
    batch_window_ms: float = 3.0
    """How long the batcher waits to fill a batch."""
    device: str | None = None
    """torch device [default: cuda when available, else cpu]."""

    def __post_init__(self) -> None:
        if self.api_key is None:
            self.api_key = os.environ.get("SCHEMABUILD_API_KEY") or None
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("--api-key: must not be empty")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port: {self.port} is not a port number (0-65535)")
        for name in ("max_body_bytes", "max_tokens_cap", "default_max_tokens", "max_queue", "max_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}: must be at least 1")
        if self.default_max_tokens > self.max_tokens_cap:
            raise ConfigError("--default-max-tokens: must not exceed --max-tokens-cap")
        if self.request_timeout_s <= 0:
            raise ConfigError("--request-timeout-s: must be positive")
        if self.batch_window_ms < 0:
            raise ConfigError("--batch-window-ms: must not be negative")


# ---- errors ----------------------------------------------------------------------------------------

class APIError(Exception):
    """An error answered with an OpenAI-style body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 408: "timeout_error",
               413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
               504: "timeout_error"}


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _param(loc: tuple) -> str | None:
    """A pydantic error location as the OpenAI `param` string: messages[0].content."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


# Pydantic names the union member it tried in error locations ("str", "list[ContentPart]"); users never typed those.
_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "function-after", "function-before"}


def _validation_error(exc: ValidationError) -> APIError:
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if p != "body" and not (isinstance(p, str) and (p in _TYPE_TAGS or "[" in p)))
    param = _param(loc)
    where = f"{param}: " if param else ""
    return APIError(400, f"{where}{err['msg']}", param=param, code="invalid_value")


# ---- request bodies --------------------------------------------------------------------------------

class _Strict(BaseModel):
    # Wrong JSON types are errors (no "3" → 3); unknown fields are ignored like OpenAI-compatible servers do.
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


class ContentPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class JSONSchemaFormat(_Strict):
    name: str | None = None
    schema_: dict | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class StreamOptions(_Strict):
    include_usage: bool | None = None


class ChatRequest(_Strict):
    """The subset of the OpenAI chat completions request this server honours."""

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    response_format: ResponseFormat | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    n: int | None = Field(default=None, ge=1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    logprobs: bool | None = None
    tools: list | None = None


class PredictRequest(_Strict):
    """Body of POST /v1/tasks/{task}/predict."""

    input: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None


def _parse_body(raw: bytes, model: type[BaseModel]):
    """The JSON body validated against `model`; every failure is a 400 APIError naming the field."""
    if not raw.strip():
        raise APIError(400, "the request body is empty; send a JSON object", code="invalid_json")
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise APIError(400, "the request body is not UTF-8", code="invalid_json") from None
    except json.JSONDecodeError as exc:
        raise APIError(400, f"malformed JSON body: {exc.msg} at line {exc.lineno} column {exc.colno}",
                       code="invalid_json") from None
    except RecursionError:
        raise APIError(400, "malformed JSON body: nested too deeply", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, not {type(data).__name__}", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    except RecursionError:
        raise APIError(400, "the request body is nested too deeply", code="invalid_value") from None


# ---- what is served --------------------------------------------------------------------------------

@dataclasses.dataclass
class Served:
    """One task the server answers to: its tokenizer, the engine that decodes for it, and its adapter."""

    task: Any
    """The schemabuild Task."""
    tokenizer: Any
    decoder: Any
    """The decoder this task's requests run on (shared by the adapters of one base model)."""
    adapter: str | None = None
    """The PEFT adapter name chosen per request; None for a full-weight model."""
    contract: dict = dataclasses.field(default_factory=dict)
    predictor: Any = None
    """A schemabuild Predictor for this task, used to turn results into predictions (confidence)."""
    engine: Any = None
    """The batching Engine (set by create_app; one per decoder)."""
    schema: dict = dataclasses.field(default_factory=dict)
    """The task's grammar schema (contract.grammar_schema(task.output))."""
    context: int | None = None
    """The model's context length in tokens, when known."""


def _model_dir_for(task, cfg: ServeConfig, runs_dir) -> Path:
    from schemabuild.runs import resolve_run

    run = resolve_run(task.name, cfg.run, runs_dir, need="model")
    return run / "model"


def load_models(tasks: list, cfg: ServeConfig, runs_dir=None, model_dirs: list | None = None) -> list[Served]:
    """Load each task's model (from `model_dirs` or its run), check its contract, share bases among adapters.

    Every contract is checked before any weights load. PEFT adapters on the same base (with the same
    tokenizer) are loaded onto one copy of it as named adapters; an adapter alone on its base is merged into it
    (no LoRA matmuls per step); full-weight models load on their own.
    """
    from schemabuild.decode import Decoder
    from schemabuild.models import adapter_base, is_adapter, load_adapters, load_checked, resolve_device
    from schemabuild.predictor import Predictor

    names = [t.name for t in tasks]
    if cfg.run and len(tasks) > 1 and model_dirs is None:
        raise ConfigError("--run: only valid when serving one task (each task serves its latest run)")
    if len(set(names)) != len(names):
        raise ConfigError(f"TASKS: each task may be served once, got {names}")
    device = resolve_device(cfg.device)
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
    served: dict[str, Served] = {}
    for task, model_dir in full:
        served[task.name] = _as_served(Predictor.from_model_dir(task, model_dir, device=device))
    for (base, *_), members in adapters.items():
        model = load_adapters(base, [(t.name, d) for t, d, *_ in members], device)
        tokenizer, contract = members[0][2], members[0][3]
        decoder = Decoder(model, tokenizer, stop_ids=list(contract["stop_ids"]), device=device)
        for task, model_dir, tok, contract in members:
            s = _as_served(Served(task=task, tokenizer=tok, decoder=decoder, adapter=task.name, contract=contract))
            decoder.compile(s.schema)  # pay the grammar compile at startup
            served[task.name] = s
    return [served[n] for n in names]


def _as_served(item) -> Served:
    """A Served from a Served or a schemabuild Predictor."""
    from schemabuild.contract import grammar_schema

    if isinstance(item, Served):
        if not item.schema:
            item.schema = grammar_schema(item.task.output)
        if item.context is None:
            item.context = _context_length(item.decoder)
        return item
    return Served(task=item.task, tokenizer=item.tokenizer, decoder=item.decoder, adapter=None,
                  contract=dict(item.contract or {}), predictor=item, schema=grammar_schema(item.task.output),
                  context=_context_length(item.decoder))


def _context_length(decoder) -> int | None:
    """The model's context window in tokens, when its config says."""
    config = getattr(getattr(decoder, "model", None), "config", None)
    return getattr(config, "max_position_embeddings", None)


# ---- metrics ---------------------------------------------------------------------------------------

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Counters and a latency histogram, rendered by hand in the Prometheus text format."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter = Counter()  # (route, method, status) -> n
        self.latency: dict[str, list[float]] = {}  # route -> bucket counts + [sum, count]
        self.tokens: Counter = Counter()  # (model, kind) -> n
        self.outcomes: Counter = Counter()  # (model, finish_reason) -> n

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(route, method, status)] += 1
            hist = self.latency.setdefault(route, [0.0] * (len(LATENCY_BUCKETS) + 2))
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    hist[i] += 1
            hist[-2] += seconds
            hist[-1] += 1

    def add_result(self, model: str, prompt_tokens: int, completion_tokens: int, finish_reason: str) -> None:
        with self.lock:
            self.tokens[(model, "prompt")] += prompt_tokens
            self.tokens[(model, "completion")] += completion_tokens
            self.outcomes[(model, finish_reason)] += 1

    def render(self, engines: dict[str, Any]) -> str:
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        with self.lock:
            family("schemabuild_http_requests_total", "counter", "HTTP requests by route, method and status.")
            for (route, method, status), n in sorted(self.requests.items()):
                out.append(f'schemabuild_http_requests_total{{route="{_esc(route)}",method="{method}",'
                           f'status="{status}"}} {n}')
            family("schemabuild_http_request_duration_seconds", "histogram", "Request latency by route.")
            for route, hist in sorted(self.latency.items()):
                r = _esc(route)
                for bound, n in zip(LATENCY_BUCKETS, hist):
                    out.append(f'schemabuild_http_request_duration_seconds_bucket{{route="{r}",le="{bound}"}} {int(n)}')
                out.append(f'schemabuild_http_request_duration_seconds_bucket{{route="{r}",le="+Inf"}} {int(hist[-1])}')
                out.append(f'schemabuild_http_request_duration_seconds_sum{{route="{r}"}} {hist[-2]:.6f}')
                out.append(f'schemabuild_http_request_duration_seconds_count{{route="{r}"}} {int(hist[-1])}')
            family("schemabuild_tokens_total", "counter", "Prompt and completion tokens by model.")
            for (model, kind), n in sorted(self.tokens.items()):
                out.append(f'schemabuild_tokens_total{{model="{_esc(model)}",kind="{kind}"}} {n}')
            family("schemabuild_completions_total", "counter", "Finished generations by model and finish reason.")
            for (model, reason), n in sorted(self.outcomes.items()):
                out.append(f'schemabuild_completions_total{{model="{_esc(model)}",finish_reason="{reason}"}} {n}')
        out += _engine_metrics(engines)
        return "\n".join(out) + "\n"


def _esc(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _metric_name(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in key.lower()).strip("_")


def _engine_metrics(engines: dict[str, Any]) -> list[str]:
    """Engine.stats() as gauges: numbers become `schemabuild_engine_<key>`, {size: count} maps get a label."""
    samples: dict[str, list[str]] = defaultdict(list)
    for label, engine in engines.items():
        try:
            stats = engine.stats() or {}
        except Exception:  # noqa: BLE001 - metrics must never fail the scrape
            continue
        for key, value in stats.items():
            name = f"schemabuild_engine_{_metric_name(key)}"
            if isinstance(value, bool):
                value = int(value)
            if isinstance(value, (int, float)):
                samples[name].append(f'{name}{{engine="{_esc(label)}"}} {value}')
            elif isinstance(value, dict):
                tag = "size" if key == "batch_sizes" else "key"
                for k, v in value.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        samples[name].append(f'{name}{{engine="{_esc(label)}",{tag}="{_esc(k)}"}} {v}')
    out = []
    for name, lines in sorted(samples.items()):
        out.append(f"# HELP {name} Decoder engine statistic.")
        out.append(f"# TYPE {name} gauge")
        out += lines
    return out


# ---- the ASGI guard: auth, body size, metrics ------------------------------------------------------

OPEN_PATHS = {"/healthz", "/", "/favicon.ico"}


class Guard:
    """ASGI middleware in front of the routes: Bearer auth, the body-size limit, per-route metrics."""

    def __init__(self, app, cfg: ServeConfig, metrics: Metrics, routes: list):
        self.app, self.cfg, self.metrics, self.routes = app, cfg, metrics, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status_box = [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
            await send(message)

        try:
            rejection = self._check(scope)
            if rejection is None:
                receive = await self._limited_body(scope, receive)
                if isinstance(receive, APIError):
                    rejection = receive
            if rejection is not None:
                await _send_error(send_wrapper, rejection)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.observe(self._route(scope), scope.get("method", ""), status_box[0],
                                 time.perf_counter() - start)

    def _route(self, scope) -> str:
        """The route template a request went to (also for requests refused here); unknown paths share one label."""
        from starlette.routing import Match

        route = scope.get("route")
        if route is None:
            route = next((r for r in self.routes if r.matches(scope)[0] != Match.NONE), None)
        return getattr(route, "path", None) or "unmatched"

    def _check(self, scope) -> APIError | None:
        key = self.cfg.api_key
        if key and scope["path"] not in OPEN_PATHS:
            headers = dict(scope.get("headers") or [])
            auth = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
                return APIError(401, "missing or wrong API key: send `Authorization: Bearer <key>`",
                                param=None, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return APIError(400, "Content-Length is not a number", code="invalid_request")
            if n > self.cfg.max_body_bytes:
                return _too_large(self.cfg.max_body_bytes)
        return None

    async def _limited_body(self, scope, receive):
        """Read the body up to the limit (also for chunked uploads) and replay it downstream."""
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return receive
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                chunks = None
                break
            body = message.get("body", b"")
            size += len(body)
            if size > self.cfg.max_body_bytes:
                return _too_large(self.cfg.max_body_bytes)
            chunks.append(body)
            if not message.get("more_body", False):
                break
        if chunks is None:
            return receive
        data = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        return replay


def _too_large(limit: int) -> APIError:
    return APIError(413, f"request body larger than {limit} bytes (--max-body-bytes)", code="request_too_large")


async def _send_error(send, err: APIError) -> None:
    body = json.dumps(error_body(err.message, err.type, err.param, err.code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ---- the app ---------------------------------------------------------------------------------------

def create_app(models: list, cfg: ServeConfig | None = None):
    """The FastAPI app serving `models` (Served records from `load_models`, or schemabuild Predictors).

    Engines start when the app starts (lifespan) and stop when it stops.
    """
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from schemabuild.decode import Engine, GrammarError, QueueFull

    cfg = cfg or ServeConfig()
    served = {s.task.name: s for s in (_as_served(m) for m in models)}
    if not served:
        raise ConfigError("TASKS: nothing to serve")
    engines: dict[int, Any] = {}
    for s in served.values():
        if id(s.decoder) not in engines:
            engines[id(s.decoder)] = Engine(s.decoder, max_batch=cfg.max_batch, window_ms=cfg.batch_window_ms,
                                            max_queue=cfg.max_queue)
        s.engine = engines[id(s.decoder)]
    engine_labels = {}
    for s in served.values():
        engine_labels.setdefault(id(s.engine), []).append(s.task.name)
    engines_by_label = {"+".join(names): next(x.engine for x in served.values() if id(x.engine) == key)
                        for key, names in engine_labels.items()}
    metrics = Metrics()
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for engine in engines.values():
            started = engine.start()
            if asyncio.iscoroutine(started):
                await started
        try:
            yield
        finally:
            for engine in engines.values():
                stopped = engine.stop()
                if asyncio.iscoroutine(stopped):
                    await stopped

    app = FastAPI(title="schemabuild", version=_version(), lifespan=lifespan)
    app.state.served, app.state.metrics, app.state.cfg = served, metrics, cfg

    def reply_error(err: APIError):
        return JSONResponse(error_body(err.message, err.type, err.param, err.code), status_code=err.status,
                            headers=err.headers)

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return reply_error(exc)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request, exc: RequestValidationError):
        errors = exc.errors()
        err = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        param = _param(tuple(p for p in err.get("loc", ()) if p not in ("body", "path", "query")))
        return reply_error(APIError(400, f"{param + ': ' if param else ''}{err.get('msg')}", param=param,
                                    code="invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        message = {404: f"no route {request.method} {request.url.path}",
                   405: f"method {request.method} not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return reply_error(APIError(exc.status_code, message, type=ERROR_TYPES.get(exc.status_code, "invalid_request_error"),
                                    code={404: "not_found", 405: "method_not_allowed"}.get(exc.status_code),
                                    headers=dict(exc.headers or {})))

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        return reply_error(APIError(500, f"internal error: {type(exc).__name__}", type="server_error",
                                    code="internal_error"))

    def lookup(name: str, param: str) -> Served:
        s = served.get(name)
        if s is None:
            raise APIError(404, f"the {param} {name!r} does not exist; this server serves: {', '.join(sorted(served))}",
                           type="invalid_request_error", param=param, code="model_not_found")
        return s

    def sampling(s: Served, body, max_tokens: int | None) -> dict:
        if max_tokens is None:
            max_tokens = cfg.default_max_tokens
        if max_tokens > cfg.max_tokens_cap:
            raise APIError(400, f"max_tokens: {max_tokens} is above this server's cap of {cfg.max_tokens_cap}",
                           param="max_tokens", code="max_tokens_too_large")
        return {"max_tokens": max_tokens,
                "temperature": 0.0 if body.temperature is None else body.temperature,
                "top_p": 1.0 if body.top_p is None else body.top_p, "seed": body.seed}

    async def generate(s: Served, prompt_ids: list[int], schema: dict | None, opts: dict, param: str):
        from schemabuild.decode import Request as DecodeRequest

        if s.context and len(prompt_ids) + opts["max_tokens"] > s.context:
            raise APIError(400, f"{param}: the prompt is {len(prompt_ids)} tokens and max_tokens is {opts['max_tokens']}; "
                                f"together they exceed the model's context of {s.context} tokens",
                           param=param, code="context_length_exceeded")
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
            raise APIError(400, f"response_format: {_first_line(exc) or 'the schema cannot be compiled'}",
                           param="response_format", code="invalid_schema") from None
        except ValueError as exc:  # the decoder's own request checks
            raise APIError(400, _first_line(exc) or "invalid request", code="invalid_value") from None
        metrics.add_result(s.task.name, result.prompt_tokens, result.completion_tokens, result.finish_reason)
        return result

    async def read(request: Request, model: type[BaseModel]):
        return _parse_body(await request.body(), model)

    @app.get("/", include_in_schema=False)
    async def playground():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "models": sorted(served)}

    @app.get("/metrics", include_in_schema=False)
    async def metrics_route():
        return PlainTextResponse(metrics.render(engines_by_label), media_type="text/plain; version=0.0.4")

    def model_card(name: str) -> dict:
        s = served[name]
        return {"id": name, "object": "model", "created": created, "owned_by": "schemabuild",
                "base_model": s.contract.get("base_model"), "adapter": s.adapter is not None,
                "schema": s.task.output.model_json_schema()}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_card(n) for n in sorted(served)]}

    @app.get("/v1/models/{model}")
    async def get_model(model: str):
        lookup(model, "model")
        return model_card(model)

    @app.post("/v1/tasks/{task}/predict")
    async def predict(task: str, request: Request):
        s = lookup(task, "task")
        body = await read(request, PredictRequest)
        opts = sampling(s, body, body.max_tokens)
        from schemabuild.contract import encode_prompt, system_prompt

        start = time.perf_counter()
        prompt_ids = encode_prompt(s.tokenizer, system_prompt(s.task, s.contract), body.input)
        result = await generate(s, prompt_ids, s.schema, opts, "input")
        latency_ms = (time.perf_counter() - start) * 1000
        output = _task_output(s, result, opts["max_tokens"])
        return {"output": output.model_dump(mode="json"), "latency_ms": round(latency_ms, 2),
                "finish_reason": result.finish_reason, "usage": _usage(result),
                "confidence": _confidence(s, result)}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await read(request, ChatRequest)
        s = lookup(body.model, "model")
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
        opts = sampling(s, body, body.max_completion_tokens or body.max_tokens)
        schema = _requested_schema(s, body.response_format)
        prompt_ids = _chat_prompt_ids(s, body.messages)
        result = await generate(s, prompt_ids, schema, opts, "messages")
        completion = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": s.task.name, "system_fingerprint": s.contract.get("schema_hash"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text, "refusal": None},
                         "logprobs": _logprobs(s, result) if body.logprobs else None,
                         "finish_reason": result.finish_reason}],
            "usage": _usage(result),
        }
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_sse(completion, include_usage), media_type="text/event-stream")
        return completion

    app.router.redirect_slashes = False
    app.add_middleware(Guard, cfg=cfg, metrics=metrics, routes=app.router.routes)
    return app


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _version() -> str:
    from schemabuild import __version__

    return __version__


def _usage(result) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


def _requested_schema(s: Served, fmt: ResponseFormat | None) -> dict | None:
    """The grammar schema a chat request asks for: the task's, the request's json_schema, or None (any object)."""
    from schemabuild.contract import grammar_schema

    if fmt is None or fmt.type == "text":
        return s.schema
    if fmt.type == "json_object":
        return None
    spec = fmt.json_schema
    if spec is None or spec.schema_ is None:
        raise APIError(400, "response_format.json_schema.schema: required when type is json_schema",
                       param="response_format.json_schema.schema", code="invalid_schema")
    import jsonschema

    try:
        jsonschema.validators.validator_for(spec.schema_).check_schema(spec.schema_)
        return grammar_schema(spec.schema_)
    except jsonschema.SchemaError as exc:
        path = "".join(f"[{p!r}]" for p in exc.path)
        raise APIError(400, f"response_format.json_schema.schema{path}: not a valid JSON schema: {exc.message}",
                       param="response_format.json_schema.schema", code="invalid_schema") from None
    except RecursionError:
        raise APIError(400, "response_format.json_schema.schema: nested too deeply",
                       param="response_format.json_schema.schema", code="invalid_schema") from None


def _chat_prompt_ids(s: Served, messages: list[ChatMessage]) -> list[int]:
    """Prompt ids for chat messages, through the same chat template and tokenization as the contract.

    Without a system (or developer) message, or with one that repeats the task's instructions or student prompt,
    the model's own system prompt (from its contract) is used; another system message replaces it. A lone user
    message then gives exactly `contract.encode_prompt` (byte-identical to training).
    """
    from schemabuild.contract import encode_prompt, student_prompt, system_prompt

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


def _task_output(s: Served, result, max_tokens: int):
    """The task's output model instance from a result; 422 when the JSON was cut off or does not validate."""
    from schemabuild.task import TaskError

    try:
        return s.task.validate_output(result.text)
    except TaskError as exc:
        if result.finish_reason == "length":
            raise APIError(422, f"max_tokens: the output was cut off at {max_tokens} tokens before the JSON was "
                                "complete; raise max_tokens", param="max_tokens", code="output_truncated") from None
        raise APIError(422, f"the model's output does not validate: {exc}", code="invalid_output") from None


def _confidence(s: Served, result) -> dict[str, float]:
    """Per top-level field: the probability the model gave that field's value (see predictor.field_confidence)."""
    from schemabuild.predictor import field_confidence

    return {k: round(v, 6) for k, v in field_confidence(s.tokenizer, result, s.decoder.stop_ids).items()}


def _logprobs(s: Served, result) -> dict:
    content = []
    for tid, lp in zip(result.token_ids, result.token_logprobs):
        token = s.tokenizer.decode([tid])
        content.append({"token": token, "logprob": lp, "bytes": list(token.encode()), "top_logprobs": []})
    return {"content": content, "refusal": None}


async def _sse(completion: dict, include_usage: bool):
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


# ---- running it ------------------------------------------------------------------------------------

@contextlib.contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run `app` with uvicorn in a background thread on host:port (0 = a free port); yields the base URL."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_keep_alive=30))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def run_server(tasks, cfg: ServeConfig, runs_dir=None):
    """`schemabuild serve`: load every task's model, then serve until interrupted."""
    import uvicorn

    served = load_models(list(tasks), cfg, runs_dir)
    app = create_app(served, cfg)
    where = f"http://{cfg.host}:{cfg.port}"
    names = ", ".join(s.task.name for s in served)
    auth = "Bearer key required" if cfg.api_key else "no API key (set --api-key or SCHEMABUILD_API_KEY to require one)"
    print(f"serving {names} at {where}  (OpenAI base_url {where}/v1, playground {where}/, {auth})", flush=True)
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: --host {cfg.host} exposes the API beyond this machine", flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info")
