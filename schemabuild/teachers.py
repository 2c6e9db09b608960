"""Teachers: who writes synthetic inputs and labels them (OpenAI-compatible API, OpenAI Batch API, offline).

Every teacher looks alike (the `Teacher` Protocol); `make_teacher` picks one from the environment:
no OPENAI_API_KEY and no OPENAI_BASE_URL → the offline augmentation teacher; `--batch` → the Batch API;
otherwise one chat completion per call against the OpenAI-compatible endpoint.

Every call goes through the SQLite cache (`schemabuild.cache`) and the cost ledger; a rerun with the same
settings is answered from the cache without a single HTTP request.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import sys
from typing import Any, Awaitable, Callable, Protocol

from schemabuild.config import ConfigError


@dataclasses.dataclass
class Labelled:
    """One teacher answer for one input; validation is the pipeline's job, not the teacher's."""

    input: str
    """The input text that was labelled."""
    raw: str | None
    """The teacher's raw answer text (JSON expected), None on failure."""
    error: str | None = None
    """Why there is no answer (e.g. "timeout after 3 retries", "batch line failed: ...")."""


class Teacher(Protocol):
    """What synthesis needs from a teacher."""

    name: str  # "openai" | "batch" | "offline"
    model: str

    async def generate_inputs(self, task, n: int, seed: int) -> list[str]:
        """Up to `n` new, distinct input texts for the task."""
        ...

    async def label(self, task, inputs: list[str]) -> list[Labelled]:
        """One Labelled per input, in the same order as `inputs`."""
        ...

    async def judge(self, task, pairs: list[tuple[str, str]]) -> list[float | None]:
        """A 1-5 score per (input, output_json) pair; None where the teacher gave no usable score."""
        ...

    def ledger(self) -> dict:
        """{"calls", "cached_calls", "prompt_tokens", "completion_tokens", "cost_usd", "budget_usd", "budget_hit"}."""
        ...


class BudgetExceeded(Exception):
    """The spend reached `--budget`; in-flight calls finish, no new uncached call starts."""

    def __init__(self, message: str, results: list | None = None):
        super().__init__(message)
        self.results = results
        """What the interrupted step finished before the cap (Labelled rows, inputs or scores), if any."""


class TeacherError(ConfigError):
    """The teacher endpoint refuses every call (bad key, unknown model, wrong URL); shown as one line."""


class CallFailed(Exception):
    """One teacher call gave no answer (retries exhausted, rejected request); the message says why."""


# ---- prices and the ledger ---------------------------------------------------------------------------

# USD per 1M tokens (input, output), standard tier; `--price-in` / `--price-out` override.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "o4-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
    "o3-mini": (1.10, 4.40),
    "o1": (15.00, 60.00),
    "o1-mini": (1.10, 4.40),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-3.5-turbo": (0.50, 1.50),
}
BATCH_DISCOUNT = 0.5  # the Batch API bills half the synchronous price


def price_for(model: str, price_in: float | None = None, price_out: float | None = None
              ) -> tuple[float, float, str | None]:
    """(USD per 1M input tokens, per 1M output tokens, note) for a model; dated snapshots match their family."""
    base = model.rsplit("/", 1)[-1]
    family = max((k for k in PRICES if base == k or base.startswith(k + "-")), key=len, default=None)
    known_in, known_out = PRICES.get(family, (None, None))
    p_in = price_in if price_in is not None else known_in
    p_out = price_out if price_out is not None else known_out
    note = None
    if p_in is None or p_out is None:
        note = f"no price known for {model!r}: cost counted as 0; pass --price-in/--price-out (USD per 1M tokens)"
    return p_in or 0.0, p_out or 0.0, note


@dataclasses.dataclass
class Ledger:
    """Calls, tokens and dollars spent by one teacher; cached calls are counted but not charged."""

    model: str
    price_in: float
    price_out: float
    budget_usd: float | None = None
    note: str | None = None
    calls: int = 0
    cached_calls: int = 0
    failed_calls: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    budget_hit: bool = False

    def charge(self, prompt_tokens: int, completion_tokens: int, discount: float = 1.0) -> None:
        self.calls += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.cost_usd += discount * (prompt_tokens * self.price_in + completion_tokens * self.price_out) / 1e6

    def over_budget(self) -> bool:
        return self.budget_usd is not None and self.cost_usd >= self.budget_usd

    def as_dict(self) -> dict:
        out = {k: getattr(self, k) for k in ("calls", "cached_calls", "failed_calls", "retries", "prompt_tokens",
                                              "completion_tokens", "budget_usd", "budget_hit", "model",
                                              "price_in", "price_out")}
        out["cost_usd"] = round(self.cost_usd, 10)
        if self.note:
            out["note"] = self.note
        return out


# ---- prompts -----------------------------------------------------------------------------------------

GENERATE_SYSTEM = ("You write realistic, varied user inputs for a task that a small model will be trained on. "
                   'Answer with JSON only: {"inputs": ["...", ...]}.')
JUDGE_SYSTEM = ("You grade answers given for a task. Score how correct and complete the answer is for the input, "
                'from 1 (wrong) to 5 (exactly right). Answer with JSON only: {"reason": "...", "score": 1-5}.')
INPUTS_PER_CALL = 20
MAX_GENERATE_ROUNDS = 5
INPUTS_FORMAT = {"type": "json_schema", "json_schema": {"name": "inputs", "strict": True, "schema": {
    "type": "object", "properties": {"inputs": {"type": "array", "items": {"type": "string"}}},
    "required": ["inputs"], "additionalProperties": False}}}
JUDGE_FORMAT = {"type": "json_schema", "json_schema": {"name": "judgement", "strict": True, "schema": {
    "type": "object", "properties": {"reason": {"type": "string"}, "score": {"type": "integer", "enum": [1, 2, 3, 4, 5]}},
    "required": ["reason", "score"], "additionalProperties": False}}}


def generate_messages(task, k: int, seed: int, call: int) -> list[dict]:
    """The request for call number `call`: instructions, a rotating sample of examples, one hint of each kind."""
    from schemabuild.contract import canonical_json

    rng = random.Random(f"{seed}:{call}")
    shown = rng.sample(task.examples, min(8, len(task.examples)))
    lines = [f"- input: {json.dumps(e.input, ensure_ascii=False)} -> answer: {canonical_json(e.output)}" for e in shown]
    steer = [f"{key.rstrip('s') if key.endswith('s') else key}: {rng.choice(values)}"
             for key, values in sorted(task.hints.items()) if values]
    user = (f"The task's instructions (the model sees them as its system prompt):\n<<<\n{task.instructions}\n>>>\n\n"
            "Examples of inputs and the answers expected:\n" + "\n".join(lines) + "\n\n"
            f"Write exactly {k} new inputs. Each must be a realistic input for this task, unlike the examples and "
            "unlike each other in wording, length and intent; cover every kind of answer, including edge cases.\n"
            + (f"This time write as: {'; '.join(steer)}.\n" if steer else "")
            + 'Answer with JSON only: {"inputs": ["...", ...]}')
    return [{"role": "system", "content": GENERATE_SYSTEM}, {"role": "user", "content": user}]


def judge_messages(task, text: str, output_json: str) -> list[dict]:
    user = (f"Task instructions:\n<<<\n{task.instructions}\n>>>\n\nInput:\n<<<\n{text}\n>>>\n\n"
            f"Answer given:\n{output_json}\n\nScore the answer from 1 to 5.")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def label_format(task) -> dict:
    """The structured-output request: the task's grammar schema, strict."""
    from schemabuild.contract import grammar_schema

    return {"type": "json_schema", "json_schema": {"name": task.name[:64], "schema": grammar_schema(task.output),
                                                    "strict": True}}


# ---- lenient parsing ---------------------------------------------------------------------------------

def extract_json(text: str, opener: str = "{") -> str | None:
    """The first complete JSON value starting with `opener` in free text (code fences, prose around it)."""
    decoder = json.JSONDecoder()
    start = text.find(opener)
    while start != -1:
        try:
            _, end = decoder.raw_decode(text, start)
            return text[start:end]
        except json.JSONDecodeError:
            start = text.find(opener, start + 1)
    return None


def parse_inputs(text: str) -> list[str]:
    """Input texts from a generation answer: {"inputs": [...]}, a bare list, or a bulleted list as a last resort."""
    value: Any = None
    for candidate in (text, extract_json(text, "{"), extract_json(text, "[")):
        if candidate:
            try:
                value = json.loads(candidate)
                break
            except json.JSONDecodeError:
                continue
    if isinstance(value, dict):
        value = value.get("inputs", next((v for v in value.values() if isinstance(v, list)), None))
    if isinstance(value, list):
        items = [v.get("input") if isinstance(v, dict) else v for v in value]
        return [v.strip() for v in items if isinstance(v, str) and v.strip()]
    lines = [ln.strip().lstrip("-*•").strip() for ln in text.splitlines()]
    lines = [ln.split(". ", 1)[1] if ln[:1].isdigit() and ". " in ln[:5] else ln for ln in lines]
    return [ln.strip('"') for ln in lines if len(ln) > 2 and not ln.startswith(("{", "}", "[", "]", "```"))]


def parse_score(text: str) -> float | None:
    found = extract_json(text or "")
    try:
        score = json.loads(found)["score"] if found else None
        score = float(score)
    except (TypeError, ValueError, KeyError, json.JSONDecodeError):
        return None
    return score if 1 <= score <= 5 else None


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_reasoning_model(model: str) -> bool:
    """o-series and gpt-5 models accept only the default temperature."""
    base = model.rsplit("/", 1)[-1]
    return base.startswith(("o1", "o3", "o4", "gpt-5"))


def _retry_after(headers) -> float | None:
    """Seconds to wait from Retry-After (seconds) or retry-after-ms; None when absent or a date."""
    try:
        if headers.get("retry-after-ms"):
            return float(headers["retry-after-ms"]) / 1000
        if headers.get("retry-after"):
            return float(headers["retry-after"])
    except (TypeError, ValueError):
        return None
    return None


def _error_message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        body = body.get("error", body)
        if isinstance(body, dict) and body.get("message"):
            return _one_line(body["message"])
    return _one_line(getattr(exc, "message", None) or exc)


# ---- the OpenAI-compatible teacher -------------------------------------------------------------------

class OpenAITeacher:
    """Chat completions against OPENAI_BASE_URL (OpenAI, vLLM, Ollama, llama.cpp, Together...).

    Retries 429 / 5xx / timeouts / connection errors itself (backoff with jitter, Retry-After honoured),
    runs at most `cfg.concurrency` calls at once, caches every answer and stops at `cfg.budget_usd`.
    """

    name = "openai"
    backoff_s = 0.5
    """First retry delay without Retry-After; doubles per retry (×0.75-1.25 jitter), capped at 30 s."""

    def __init__(self, cfg, cache):
        self.cfg = cfg
        self.cache = cache
        self.model = cfg.teacher_model
        self.base_url = os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        p_in, p_out, note = price_for(self.model, cfg.price_in, cfg.price_out)
        self._ledger = Ledger(self.model, p_in, p_out, cfg.budget_usd, note)
        self._fallback_key = f"no_response_format:{self.base_url}:{self.model}"
        self._no_response_format = bool(cache.get_meta(self._fallback_key, False))
        self._fatal: Exception | None = None
        self._loop = None
        self._client = None
        self._sem = None
        self._users = 0

    def ledger(self) -> dict:
        return self._ledger.as_dict()

    def _session(self):
        """The client and semaphore of the running event loop (synthesis may run several loops in turn)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            from openai import AsyncOpenAI

            key = os.environ.get("OPENAI_API_KEY") or "none"  # local servers take any key
            self._client = AsyncOpenAI(api_key=key, base_url=self.base_url, max_retries=0, timeout=self.cfg.timeout)
            self._sem = asyncio.Semaphore(self.cfg.concurrency)
            self._loop = loop
        return self._client, self._sem

    @contextlib.asynccontextmanager
    async def using(self):
        """Hold the client open for one step; the last user closes it, so no connection outlives its loop."""
        self._users += 1
        try:
            yield self._session()
        finally:
            self._users -= 1
            if self._users == 0 and self._client is not None:
                client, self._client, self._loop = self._client, None, None
                await client.close()

    def _params(self, temperature: float, seed: int) -> dict:
        return {"seed": seed} if _is_reasoning_model(self.model) else {"temperature": temperature, "seed": seed}

    def _check_can_start(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._ledger.over_budget():
            self._ledger.budget_hit = True
            raise BudgetExceeded(f"--budget-usd {self._ledger.budget_usd}: spent ${self._ledger.cost_usd:.4f}")

    async def retrying(self, call: Callable[[], Awaitable[Any]], what: str = "call") -> Any:
        """Run `call()` with this teacher's retry policy; CallFailed when retries run out, TeacherError if fatal."""
        import openai

        attempt = 0
        while True:
            wait = None
            try:
                return await call()
            except openai.APIStatusError as exc:
                code = exc.status_code
                if code in (401, 403, 404):
                    self._fatal = TeacherError(
                        f"teacher {self.model} at {self.base_url}: HTTP {code} on {what}: {_error_message(exc)}"
                        + (" (check OPENAI_API_KEY)" if code in (401, 403) else " (check --teacher-model and OPENAI_BASE_URL)"))
                    raise self._fatal from None
                if not (code in (408, 409, 429) or code >= 500):
                    raise
                reason = f"HTTP {code}"
                if code in (429, 503):
                    wait = _retry_after(exc.response.headers)
            except openai.APITimeoutError:
                reason = "timeout"
            except openai.APIConnectionError:
                reason = "connection error"
            if attempt >= self.cfg.max_retries:
                raise CallFailed(f"{reason} after {attempt} retries")
            if wait is None:
                wait = min(30.0, self.backoff_s * 2 ** attempt) * random.uniform(0.75, 1.25)
            else:
                wait += random.uniform(0, 0.1 * wait)  # never earlier than asked
            attempt += 1
            self._ledger.retries += 1
            await asyncio.sleep(wait)

    async def chat(self, messages: list[dict], params: dict, response_format: dict | None) -> str:
        """One cached chat completion → the answer text (CallFailed / BudgetExceeded / TeacherError otherwise)."""
        from schemabuild.cache import call_key

        rf = None if self._no_response_format else response_format
        key = call_key(self.model, messages, params, rf)
        hit = self.cache.get(key)
        if hit is not None:
            self._ledger.cached_calls += 1
            return hit["response"]
        client, sem = self._session()
        async with sem:
            # a call that waited here may find the fallback switched on meanwhile: ask the new way
            rejected = bool(rf) and self._no_response_format
            if not rejected:
                self._check_can_start()
                text = await self._request(client, key, messages, params, rf)
                if text is not None:
                    return text
        # The endpoint does not take response_format: remember that (for reruns too) and ask again without it.
        if not self._no_response_format:
            self._no_response_format = True
            self.cache.set_meta(self._fallback_key, True)
            print(f"teacher: {self.base_url} rejects response_format; asking for JSON in the prompt and "
                  "extracting it from the answer", file=sys.stderr)
        return await self.chat(messages, params, response_format)

    async def _request(self, client, key: str, messages: list[dict], params: dict, rf: dict | None) -> str | None:
        """The HTTP call with retries; the answer (cached and charged), or None when response_format is rejected."""
        import openai

        # response_format goes in as extra_body: the same JSON on the wire, without the client walking the
        # whole schema through its typed-params transform on every call (a third of its CPU per call)
        extra = {"extra_body": {"response_format": rf}} if rf else {}
        try:
            resp = await self.retrying(lambda: client.chat.completions.create(
                model=self.model, messages=messages, timeout=self.cfg.timeout, **params, **extra), "chat")
        except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
            message = _error_message(exc)
            if rf and ("response_format" in message or "json_schema" in message):
                return None
            self._ledger.failed_calls += 1
            raise CallFailed(f"HTTP {exc.status_code}: {message}") from None
        except CallFailed:
            self._ledger.failed_calls += 1
            raise
        except TeacherError:
            raise
        except (openai.APIError, ValueError) as exc:  # e.g. a body the client cannot read
            self._ledger.failed_calls += 1
            raise CallFailed(_one_line(f"{type(exc).__name__}: {exc}")) from None
        choice = resp.choices[0] if resp.choices else None
        usage = resp.usage
        p, c = (usage.prompt_tokens or 0, usage.completion_tokens or 0) if usage else (0, 0)
        self._ledger.charge(p, c)
        if choice is None or choice.message.content is None:
            refusal = choice.message.refusal if choice is not None else None
            raise CallFailed("empty answer" + (f" (refusal: {_one_line(refusal)})" if refusal else ""))
        self.cache.put(key, self.model, choice.message.content, p, c)
        return choice.message.content

    async def gather(self, coros: list[Awaitable], desc: str) -> list:
        """Run coroutines concurrently with a progress bar; results (or exceptions) in order; fatal errors raised."""
        from tqdm.auto import tqdm

        async with self.using():
            with tqdm(total=len(coros), desc=desc, unit="call", leave=False, dynamic_ncols=True) as bar:
                results = await asyncio.gather(*(self._tracked(c, bar) for c in coros), return_exceptions=True)
        for r in results:
            if isinstance(r, TeacherError) or (isinstance(r, BaseException) and not isinstance(r, Exception)):
                raise r
        return results

    @staticmethod
    async def _tracked(coro, bar):
        try:
            return await coro
        finally:
            bar.update(1)

    # ---- the Protocol ----------------------------------------------------------------------------------

    async def generate_inputs(self, task, n: int, seed: int) -> list[str]:
        """Ask for inputs 20 per call, each call with its own examples, hints, temperature and seed; dedup."""
        seen = {_norm(e.input) for e in task.examples}
        found: list[str] = []
        errors: list[str] = []
        budget_hit = None
        call = 0
        for _ in range(MAX_GENERATE_ROUNDS):
            need = n - len(found)
            if need <= 0 or budget_hit:
                break
            sizes = [min(INPUTS_PER_CALL, need - i) for i in range(0, need, INPUTS_PER_CALL)]
            coros = []
            for k in sizes:
                temperature = 0.8 + 0.1 * (call % 4)  # 0.8-1.1: calls differ even where seed is ignored
                coros.append(self.chat(generate_messages(task, k, seed, call),
                                       self._params(round(temperature, 2), seed * 100_003 + call), INPUTS_FORMAT))
                call += 1
            added = 0
            for result in await self.gather(coros, "generate inputs"):
                if isinstance(result, BudgetExceeded):
                    budget_hit = result
                    continue
                if isinstance(result, Exception):
                    errors.append(str(result))
                    continue
                for text in parse_inputs(result):
                    if _norm(text) not in seen:
                        seen.add(_norm(text))
                        found.append(text)
                        added += 1
            if added == 0:
                break
        if budget_hit:
            raise BudgetExceeded(str(budget_hit), results=found[:n])
        if not found and errors:
            raise TeacherError(f"teacher {self.model} at {self.base_url}: no inputs generated: {errors[0]}")
        return found[:n]

    async def label_one(self, task, text: str, response_format: dict | None = None) -> str:
        from schemabuild.contract import messages

        raw = await self.chat(messages(task.instructions, text), self._params(0.0, self.cfg.seed),
                              response_format or label_format(task))
        if self._no_response_format:
            raw = extract_json(raw) or raw
        return raw

    async def label(self, task, inputs: list[str]) -> list[Labelled]:
        """One structured-output call per input (task instructions as the system message)."""
        rf = label_format(task)  # built once: the schema is the same for every input
        results = await self.gather([self.label_one(task, text, rf) for text in inputs], "label")
        return _labelled(inputs, results)

    async def judge(self, task, pairs: list[tuple[str, str]]) -> list[float | None]:
        async def one(text, output_json):
            try:
                return parse_score(await self.chat(judge_messages(task, text, output_json),
                                                   self._params(0.0, self.cfg.seed), JUDGE_FORMAT))
            except CallFailed:
                return None

        results = await self.gather([one(t, o) for t, o in pairs], "judge")
        scores = [r if not isinstance(r, BaseException) else None for r in results]
        budget = next((r for r in results if isinstance(r, BudgetExceeded)), None)
        if budget:
            raise BudgetExceeded(str(budget), results=scores)
        return scores


def _labelled(inputs: list[str], results: list) -> list[Labelled]:
    """Labelled rows from per-input results (text or exception); raises BudgetExceeded carrying them if capped."""
    rows, budget = [], None
    for text, result in zip(inputs, results):
        if isinstance(result, BudgetExceeded):
            budget = result
            rows.append(Labelled(text, None, "budget reached"))
        elif isinstance(result, BaseException):
            rows.append(Labelled(text, None, str(result) or type(result).__name__))
        else:
            rows.append(Labelled(text, result))
    if budget is not None:
        raise BudgetExceeded(str(budget), results=rows)
    return rows


# ---- the Batch API teacher ---------------------------------------------------------------------------

BATCH_DONE = {"completed", "failed", "expired", "cancelled"}


class BatchTeacher:
    """Labels through the OpenAI Batch API (half price, up to 24 h); inputs and judging use the chat path.

    The batch id is stored in the cache before polling, keyed by the hash of the request file, so a rerun
    resumes the batch in flight; every answer it brings back goes into the per-call cache.
    """

    name = "batch"

    def __init__(self, cfg, cache):
        self.chat = OpenAITeacher(cfg, cache)
        self.cfg = cfg
        self.cache = cache
        self.model = cfg.teacher_model

    def ledger(self) -> dict:
        return self.chat.ledger()

    async def generate_inputs(self, task, n: int, seed: int) -> list[str]:
        return await self.chat.generate_inputs(task, n, seed)

    async def judge(self, task, pairs: list[tuple[str, str]]) -> list[float | None]:
        return await self.chat.judge(task, pairs)

    async def label(self, task, inputs: list[str]) -> list[Labelled]:
        from schemabuild.cache import call_key
        from schemabuild.contract import messages

        chat, ledger = self.chat, self.chat._ledger
        params, rf = chat._params(0.0, self.cfg.seed), label_format(task)
        results: list[Any] = [None] * len(inputs)
        requests, keys = [], {}
        for i, text in enumerate(inputs):
            msgs = messages(task.instructions, text)
            key = call_key(self.model, msgs, params, rf)  # the same key as the chat path: one cache for both
            hit = self.cache.get(key)
            if hit is not None:
                ledger.cached_calls += 1
                results[i] = hit["response"]
                continue
            keys[f"req-{i}"] = (i, key)
            requests.append({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                             "body": {"model": self.model, "messages": msgs, **params, "response_format": rf}})
        if requests:
            try:
                chat._check_can_start()
            except BudgetExceeded as exc:
                raise BudgetExceeded(str(exc), results=_labelled(inputs, [r if r is not None else exc for r in results])
                                     ) from None
            async with self.chat.using():
                answers = await self._run_batch(requests)
            for cid, (i, key) in keys.items():
                answer = answers.get(cid) or {"error": "batch line missing from the output"}
                if "text" in answer:
                    ledger.charge(answer["prompt_tokens"], answer["completion_tokens"], BATCH_DISCOUNT)
                    self.cache.put(key, self.model, answer["text"], answer["prompt_tokens"], answer["completion_tokens"])
                    results[i] = answer["text"]
                else:
                    ledger.failed_calls += 1
                    results[i] = CallFailed(f"batch line failed: {answer['error']}")
        return _labelled(inputs, results)

    async def _run_batch(self, requests: list[dict]) -> dict[str, dict]:
        """Upload, create (or resume), poll, download; {custom_id: {"text", tokens} | {"error"}}."""
        from tqdm.auto import tqdm

        client, _ = self.chat._session()
        retrying = self.chat.retrying
        content = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in requests).encode()
        request_hash = hashlib.sha256(content).hexdigest()
        batch_id = self.cache.get_batch(request_hash)
        try:
            if batch_id:
                print(f"teacher: resuming batch {batch_id} ({len(requests)} requests)", file=sys.stderr)
            else:
                upload = await retrying(lambda: client.files.create(
                    file=("requests.jsonl", content, "application/jsonl"), purpose="batch"), "files.create")
                batch = await retrying(lambda: client.batches.create(
                    input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"), "batches.create")
                batch_id = batch.id
                self.cache.put_batch(request_hash, batch_id)  # before polling: a rerun resumes this batch
                print(f"teacher: batch {batch_id} created ({len(requests)} requests)", file=sys.stderr)
            batch = await retrying(lambda: client.batches.retrieve(batch_id), "batches.retrieve")
            with tqdm(total=len(requests), desc=f"batch {batch_id}", unit="req", leave=False) as bar:
                while batch.status not in BATCH_DONE:
                    counts = batch.request_counts
                    if counts is not None:
                        bar.n = (counts.completed or 0) + (counts.failed or 0)
                    bar.set_postfix_str(batch.status)
                    await asyncio.sleep(self.cfg.batch_poll_s)
                    batch = await retrying(lambda: client.batches.retrieve(batch_id), "batches.retrieve")
        except CallFailed as exc:
            raise TeacherError(f"teacher batch at {self.chat.base_url}: {exc}") from None

        answers: dict[str, dict] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            try:
                body = await retrying(lambda: client.files.content(file_id), "files.content")
            except CallFailed as exc:
                raise TeacherError(f"teacher batch {batch_id}: could not download {file_id}: {exc}") from None
            for line in body.text.splitlines():
                if line.strip():
                    row = json.loads(line)
                    answers[row.get("custom_id")] = _batch_answer(row)
        if batch.status != "completed":
            why = f"batch {batch.status}"
            if batch.errors and batch.errors.data:
                why += ": " + _one_line(batch.errors.data[0].message or "")
            for r in requests:
                answers.setdefault(r["custom_id"], {"error": why})
        self.cache.drop_batch(request_hash)  # its answers are cached now; failed lines go into a new batch
        return answers


def _batch_answer(row: dict) -> dict:
    """{"text", "prompt_tokens", "completion_tokens"} or {"error"} from one line of a batch output/error file."""
    response = row.get("response") or {}
    body = response.get("body") or {}
    if row.get("error") or response.get("status_code", 200) != 200:
        err = row.get("error") or body.get("error") or {}
        message = err.get("message") if isinstance(err, dict) else str(err)
        return {"error": _one_line(f"HTTP {response.get('status_code', '?')}: {message or 'no message'}")}
    try:
        text = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return {"error": "no answer in the batch line"}
    if text is None:
        return {"error": "empty answer"}
    usage = body.get("usage") or {}
    return {"text": text, "prompt_tokens": usage.get("prompt_tokens") or 0,
            "completion_tokens": usage.get("completion_tokens") or 0}


# ---- choosing a teacher ------------------------------------------------------------------------------

def make_teacher(task, cfg, cache_file) -> Teacher:
    """The offline teacher without OPENAI_API_KEY / OPENAI_BASE_URL, else the Batch API or chat teacher.

    Prints one line saying which teacher and model are used.
    """
    from schemabuild.cache import TeacherCache

    if not os.environ.get("OPENAI_API_KEY") and not os.environ.get("OPENAI_BASE_URL"):
        from schemabuild.offline import OfflineTeacher

        teacher = OfflineTeacher(task, cfg)
        print(f"teacher: offline augmentation of the {len(task.examples)} examples "
              "(set OPENAI_API_KEY or OPENAI_BASE_URL to use a model)", file=sys.stderr)
        return teacher
    cache = TeacherCache(cache_file)
    teacher = BatchTeacher(cfg, cache) if cfg.batch else OpenAITeacher(cfg, cache)
    base_url = os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
    how = "Batch API" if cfg.batch else f"concurrency {cfg.concurrency}"
    print(f"teacher: {cfg.teacher_model} at {base_url} ({how}, cache {cache_file})", file=sys.stderr)
    return teacher
