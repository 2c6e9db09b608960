"""The OpenAI-compatible chat teacher (OpenAI, vLLM, Ollama, llama.cpp, Together...): retries, concurrency,
the per-call cache and the budget."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
from typing import Any, Awaitable, Callable

from schemabuild.contract import messages
from schemabuild.synth.cache import call_key
from schemabuild.synth.protocol import (INPUTS_FORMAT, INPUTS_PER_CALL, JUDGE_FORMAT, MAX_GENERATE_ROUNDS, BudgetExceeded,
                                        CallFailed, Labelled, Ledger, TeacherError, extract_json, generate_messages,
                                        judge_messages, label_format, labelled_rows, one_line, parse_inputs, parse_score,
                                        price_for)


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


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
            return one_line(body["message"])
    return one_line(getattr(exc, "message", None) or exc)


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
            raise CallFailed(one_line(f"{type(exc).__name__}: {exc}")) from None
        choice = resp.choices[0] if resp.choices else None
        usage = resp.usage
        p, c = (usage.prompt_tokens or 0, usage.completion_tokens or 0) if usage else (0, 0)
        self._ledger.charge(p, c)
        if choice is None or choice.message.content is None:
            refusal = choice.message.refusal if choice is not None else None
            raise CallFailed("empty answer" + (f" (refusal: {one_line(refusal)})" if refusal else ""))
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
        raw = await self.chat(messages(task.instructions, text), self._params(0.0, self.cfg.seed),
                              response_format or label_format(task))
        if self._no_response_format:
            raw = extract_json(raw) or raw
        return raw

    async def label(self, task, inputs: list[str]) -> list[Labelled]:
        """One structured-output call per input (task instructions as the system message)."""
        rf = label_format(task)  # built once: the schema is the same for every input
        results = await self.gather([self.label_one(task, text, rf) for text in inputs], "label")
        return labelled_rows(inputs, results)

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

