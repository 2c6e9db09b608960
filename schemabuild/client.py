"""A small Python client for `schemabuild serve`: predictions come back as the task's own Pydantic model.

    from schemabuild import Client

    client = Client("http://127.0.0.1:8000")
    pick = client.predict("tool_picker", "billy play some daft punk")   # a ToolPick
    print(pick.tool, pick.query)

Any OpenAI-compatible client works too (`base_url=http://127.0.0.1:8000/v1`, model = the task name).
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel

from schemabuild.task import load_task


class ClientError(Exception):
    """The server answered with an error; `status`, `type`, `param` and `code` come from its error body."""

    def __init__(self, status: int, message: str, type: str | None = None, param: str | None = None,
                 code: str | None = None):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


class Client:
    """Talks to a schemabuild server over HTTP; resolves task names to their output models via the task files."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 60.0,
                 tasks_dir: str | os.PathLike | None = None):
        import httpx

        self.base_url = base_url.rstrip("/")
        api_key = api_key or os.environ.get("SCHEMABUILD_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.tasks_dir = tasks_dir
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        self._tasks: dict[str, Any] = {}
        self.last: dict | None = None
        """The last raw response body (latency_ms, usage, confidence for predict)."""

    def task(self, task):
        """The schemabuild Task for `task`: a Task as given, or a name loaded once from the tasks folder."""
        if not isinstance(task, str):
            self._tasks.setdefault(task.name, task)
            return task
        if task not in self._tasks:
            self._tasks[task] = load_task(task, self.tasks_dir)
        return self._tasks[task]

    def _post(self, path: str, body: dict) -> dict:
        response = self._http.post(path, json=body)
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code >= 400:
            err = (data or {}).get("error") if isinstance(data, dict) else None
            if isinstance(err, dict):
                raise ClientError(response.status_code, err.get("message", ""), err.get("type"), err.get("param"),
                                  err.get("code"))
            raise ClientError(response.status_code, response.text[:200])
        self.last = data
        return data

    def predict(self, task, text: str, **options: Any) -> BaseModel:
        """The task's output model instance for `text`.

        `task` is a task name (its file is loaded from the tasks folder to get the output model) or a Task,
        whose own output class is then used; options: max_tokens, temperature, top_p, seed.
        """
        t = self.task(task)
        data = self._post(f"/v1/tasks/{t.name}/predict", {"input": text, **options})
        return t.validate_output(data["output"])

    def chat(self, task, messages: list[dict] | str, response_format: dict | None = None,
             **options: Any) -> Any:
        """A chat completion from `task`'s model (a name or a Task); returns the parsed JSON content (a dict,
        or the task's output model when no response_format is given)."""
        import json

        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        name = task if isinstance(task, str) else task.name
        body = {"model": name, "messages": messages, **options}
        if response_format is not None:
            body["response_format"] = response_format
        data = self._post("/v1/chat/completions", body)
        content = data["choices"][0]["message"]["content"]
        if response_format is None:
            return self.task(task).validate_output(content)
        return json.loads(content)

    def models(self) -> list[str]:
        response = self._http.get("/v1/models")
        if response.status_code >= 400:
            raise ClientError(response.status_code, response.text[:200])
        return [m["id"] for m in response.json()["data"]]

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
