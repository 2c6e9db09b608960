"""The OpenAI Batch API teacher: labels at half price (up to 24 h); inputs and judging use the chat teacher."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from typing import Any

from schemabuild.contract import messages
from schemabuild.synth.api import OpenAITeacher
from schemabuild.synth.cache import call_key
from schemabuild.synth.protocol import (BATCH_DISCOUNT, BudgetExceeded, CallFailed, Labelled, TeacherError, label_format,
                                        labelled_rows, one_line)


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
                raise BudgetExceeded(str(exc), results=labelled_rows(inputs, [r if r is not None else exc for r in results])
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
        return labelled_rows(inputs, results)

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
                why += ": " + one_line(batch.errors.data[0].message or "")
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
        return {"error": one_line(f"HTTP {response.get('status_code', '?')}: {message or 'no message'}")}
    try:
        text = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return {"error": "no answer in the batch line"}
    if text is None:
        return {"error": "empty answer"}
    usage = body.get("usage") or {}
    return {"text": text, "prompt_tokens": usage.get("prompt_tokens") or 0,
            "completion_tokens": usage.get("completion_tokens") or 0}
