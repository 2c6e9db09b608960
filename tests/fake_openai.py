"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests and benchmarks, scriptable per test.

    server = FakeOpenAI().start()          # or the `fake_openai` fixture, which also sets OPENAI_BASE_URL
    server.answers["play some jazz"] = {"tool": "music.play", "query": "jazz"}
    server.enqueue(status=429, headers={"Retry-After": "0.3"})   # the next chat call gets this, then normal
    ...
    server.counts["/v1/chat/completions"], server.message_counts, server.requests

Endpoints: POST /v1/chat/completions, POST /v1/files (multipart), GET /v1/files/{id}/content,
POST /v1/batches, GET /v1/batches/{id}. Anything else: 404 with an OpenAI-style error body.
Run standalone (for a subprocess test or by hand): `python -m tests.fake_openai --latency 0.05`.
"""

from __future__ import annotations

import collections
import dataclasses
import email.parser
import email.policy
import hashlib
import itertools
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import pytest

GENERATE_MARK = "You write realistic, varied user inputs"  # schemabuild.synth.protocol.GENERATE_SYSTEM starts so
JUDGE_MARK = "You grade answers"  # schemabuild.synth.protocol.JUDGE_SYSTEM starts so


@dataclasses.dataclass
class Scripted:
    """One scripted reply: an HTTP status with an error body, or a 200 with `content`; `delay` first."""

    status: int = 200
    content: str | None = None
    headers: dict = dataclasses.field(default_factory=dict)
    delay: float = 0.0
    body: Any = None
    """A full response body to send instead (dict → JSON, str/bytes → as is, e.g. a non-JSON body)."""


def messages_hash(messages: list[dict]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]


def user_text(body: dict) -> str:
    """The last user message of a chat request."""
    return next((m["content"] for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")


def system_text(body: dict) -> str:
    return next((m["content"] for m in body.get("messages", []) if m.get("role") == "system"), "")


class FakeOpenAI:
    """The server plus its script, answers and counters; thread-safe."""

    def __init__(self, latency: float = 0.0, responder: Callable[[dict], str] | None = None,
                 batch_polls: int = 2, reject_response_format: bool = False):
        self.latency = latency
        """Seconds every request waits before it is answered (benchmarks)."""
        self.responder = responder or self.default_responder
        """request body → assistant content, for every chat call not taken by the script."""
        self.batch_polls = batch_polls
        """A batch completes on its `batch_polls`-th GET."""
        self.reject_response_format = reject_response_format
        """Answer 400 "response_format is not supported" to any request that sets response_format."""
        self.answers: dict[str, Any] = {}
        """The default responder's labels: user message → output (dict or JSON text)."""
        self.batch_status = "completed"
        """The status a batch ends in ("expired", "failed", "cancelled" to test those paths)."""
        self.batch_fail: Callable[[dict], str | None] = lambda line: None
        """Batch request line → error message to put in the error file instead of answering it (None = answer)."""
        self.script: collections.deque[Scripted] = collections.deque()
        self.requests: list[dict] = []
        self.counts: collections.Counter = collections.Counter()
        self.message_counts: collections.Counter = collections.Counter()
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.prompt_tokens = 7
        self.completion_tokens = 5
        self._ids = itertools.count(1)
        self._generated = itertools.count(1)
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    # ---- scripting -------------------------------------------------------------------------------------

    def enqueue(self, status: int = 200, content: str | None = None, headers: dict | None = None,
                delay: float = 0.0, body: Any = None) -> None:
        """Script the next chat completion reply (FIFO); unscripted calls go to the responder."""
        self.script.append(Scripted(status, content, dict(headers or {}), delay, body))

    def default_responder(self, body: dict) -> str:
        """Inputs for generation calls, 5/5 for judge calls, `answers[user message]` (else "{}") for labels."""
        system = system_text(body)
        if system.startswith(GENERATE_MARK):
            k = int(m.group(1)) if (m := re.search(r"Write exactly (\d+)", user_text(body))) else 5
            return json.dumps({"inputs": [f"synthetic input number {next(self._generated)}" for _ in range(k)]})
        if system.startswith(JUDGE_MARK):
            return json.dumps({"reason": "fine", "score": 5})
        answer = self.answers.get(user_text(body), {})
        return answer if isinstance(answer, str) else json.dumps(answer)

    # ---- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> "FakeOpenAI":
        server = self

        class Handler(_Handler):
            fake = server

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # the default backlog of 5 refuses bursts of concurrent connections
            daemon_threads = True

        self._httpd = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def url(self) -> str:
        """The base URL for OPENAI_BASE_URL, e.g. http://127.0.0.1:54321/v1."""
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- handlers (called from server threads) ------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    def _completion(self, body: dict, content: str) -> dict:
        return {"id": self._new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                          "total_tokens": self.prompt_tokens + self.completion_tokens}}

    def chat(self, body: dict) -> tuple[int, dict, Any, float]:
        """(status, headers, body, delay) for one chat completion."""
        with self._lock:
            self.message_counts[messages_hash(body.get("messages", []))] += 1
            scripted = self.script.popleft() if self.script else None
        if scripted is not None:
            if scripted.body is not None:
                return scripted.status, scripted.headers, scripted.body, scripted.delay
            if scripted.status != 200:
                return (scripted.status, scripted.headers,
                        _error(f"scripted HTTP {scripted.status}", "server_error"), scripted.delay)
            content = scripted.content if scripted.content is not None else self.responder(body)
            return 200, scripted.headers, self._completion(body, content), scripted.delay
        if self.reject_response_format and body.get("response_format"):
            return 400, {}, _error("response_format is not supported by this server", "invalid_request_error",
                                   param="response_format"), 0.0
        return 200, {}, self._completion(body, self.responder(body)), 0.0

    def upload(self, fields: dict[str, bytes]) -> dict:
        file_id = self._new_id("file")
        data = fields.get("file", b"")
        self.files[file_id] = {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                               "filename": "upload.jsonl", "purpose": fields.get("purpose", b"").decode(),
                               "status": "processed", "data": data}
        return {k: v for k, v in self.files[file_id].items() if k != "data"}

    def _store(self, data: bytes, purpose: str) -> str:
        file_id = self._new_id("file")
        self.files[file_id] = {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                               "filename": f"{file_id}.jsonl", "purpose": purpose, "status": "processed",
                               "data": data}
        return file_id

    def create_batch(self, body: dict) -> tuple[int, Any]:
        file_id = body.get("input_file_id")
        if file_id not in self.files:
            return 404, _error(f"no file {file_id}", "invalid_request_error")
        lines = [json.loads(x) for x in self.files[file_id]["data"].decode().splitlines() if x.strip()]
        batch_id = self._new_id("batch")
        self.batches[batch_id] = {
            "id": batch_id, "object": "batch", "endpoint": body.get("endpoint"), "errors": None,
            "input_file_id": file_id, "completion_window": body.get("completion_window"), "status": "validating",
            "output_file_id": None, "error_file_id": None, "created_at": int(time.time()),
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0}, "polls": 0, "lines": lines}
        return 200, _public(self.batches[batch_id])

    def poll_batch(self, batch_id: str) -> tuple[int, Any]:
        batch = self.batches.get(batch_id)
        if batch is None:
            return 404, _error(f"no batch {batch_id}", "invalid_request_error")
        batch["polls"] += 1
        if batch["status"] not in ("completed", "failed", "expired", "cancelled"):
            if batch["polls"] >= self.batch_polls:
                self._finish_batch(batch)
            else:
                batch["status"] = "in_progress"
        return 200, _public(batch)

    def _finish_batch(self, batch: dict) -> None:
        if self.batch_status != "completed":  # nothing answered
            batch["status"] = self.batch_status
            if self.batch_status == "failed":
                batch["errors"] = {"object": "list", "data": [{"code": "invalid", "message": "scripted failure",
                                                               "line": None, "param": None}]}
            return
        out, err = [], []
        for line in batch["lines"]:
            message = self.batch_fail(line)
            row = {"id": self._new_id("batch_req"), "custom_id": line["custom_id"]}
            if message is None:
                completion = self._completion(line["body"], self.responder(line["body"]))
                out.append({**row, "response": {"status_code": 200, "request_id": row["id"], "body": completion},
                            "error": None})
            else:
                err.append({**row, "response": {"status_code": 400, "request_id": row["id"],
                                                "body": _error(message, "invalid_request_error")}, "error": None})
        dump = lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode()  # noqa: E731
        batch["output_file_id"] = self._store(dump(out), "batch_output") if out else None
        batch["error_file_id"] = self._store(dump(err), "batch_output") if err else None
        batch["request_counts"] = {"total": len(batch["lines"]), "completed": len(out), "failed": len(err)}
        batch["status"] = "completed"


def _public(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k not in ("polls", "lines")}


def _error(message: str, kind: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def _multipart(content_type: str, data: bytes) -> dict[str, bytes]:
    """Form fields of a multipart/form-data body (name → raw bytes)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + data)
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            for part in message.iter_parts()}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real endpoints
    disable_nagle_algorithm = True  # headers and body are two writes: without this, +40 ms per reply
    fake: FakeOpenAI

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, status: int, body: Any, headers: dict | None = None) -> None:
        data = body if isinstance(body, bytes) else body.encode() if isinstance(body, str) else json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if not isinstance(body, bytes) else "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, str(v))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            self.close_connection = True

    def _record(self, body: Any) -> None:
        fake = self.fake
        with fake._lock:
            fake.counts["total"] += 1
            fake.counts[self.path] += 1
            fake.requests.append({"method": self.command, "path": self.path, "body": body,
                                  "authorization": self.headers.get("Authorization")})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length)
        fake = self.fake
        if self.path == "/v1/files":
            fields = _multipart(self.headers["Content-Type"], data)
            self._record({"purpose": fields.get("purpose", b"").decode()})
            time.sleep(fake.latency)
            return self._reply(200, fake.upload(fields))
        try:
            body = json.loads(data or b"{}")
        except json.JSONDecodeError:
            self._record(None)
            return self._reply(400, _error("body is not JSON", "invalid_request_error"))
        self._record(body)
        if self.path == "/v1/chat/completions":
            status, headers, reply, delay = fake.chat(body)
            time.sleep(fake.latency + delay)
            return self._reply(status, reply, headers)
        if self.path == "/v1/batches":
            time.sleep(fake.latency)
            return self._reply(*fake.create_batch(body))
        self._reply(404, _error(f"no route POST {self.path}", "invalid_request_error"))

    def do_GET(self):
        self._record(None)
        fake = self.fake
        time.sleep(fake.latency)
        if m := re.fullmatch(r"/v1/files/([\w-]+)/content", self.path):
            f = fake.files.get(m.group(1))
            return self._reply(200, f["data"]) if f else self._reply(404, _error("no such file", "invalid_request_error"))
        if m := re.fullmatch(r"/v1/batches/([\w-]+)", self.path):
            return self._reply(*fake.poll_batch(m.group(1)))
        self._reply(404, _error(f"no route GET {self.path}", "invalid_request_error"))


@pytest.fixture
def fake_openai(monkeypatch):
    """A started FakeOpenAI; OPENAI_BASE_URL / OPENAI_API_KEY point at it (subprocesses inherit them)."""
    server = FakeOpenAI().start()
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    yield server
    server.stop()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Serve the fake OpenAI API until interrupted.")
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    with FakeOpenAI(latency=args.latency) as fake:
        print(f"OPENAI_BASE_URL={fake.url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
