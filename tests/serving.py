"""Helpers for the server tests: the models to serve and a real uvicorn server on 127.0.0.1.

Most server tests serve `quick_pick`, a test task whose output has only bounded fields (an enum and a bool),
on an untrained tiny model: constrained decoding always completes it in a few tokens, so the tests exercise
the server, not the model's quality. Tests of the shipped tool_picker task use the trained run.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any, Iterator

import pytest

QUICK_TASK = '''"""A test task with only bounded output fields."""

from typing import Literal

from pydantic import BaseModel

from schemabuild import Example, Task


class Pick(BaseModel):
    tool: Literal["music.play", "weather.forecast", "timer.set", "no_tool"]
    urgent: bool


task = Task(
    name="quick_pick",
    instructions="Pick the tool the message calls for and whether it is urgent. Answer with JSON only.",
    output=Pick,
    examples=[
        Example("play some jazz", Pick(tool="music.play", urgent=False)),
        Example("weather in Oslo right now!!", Pick(tool="weather.forecast", urgent=True)),
        Example("timer 5 minutes", Pick(tool="timer.set", urgent=False)),
        Example("thanks", Pick(tool="no_tool", urgent=False)),
    ],
)
'''


@dataclasses.dataclass
class Quick:
    task: Any
    model_dir: Path
    tasks_dir: Path


def build_quick(root: Path) -> Quick:
    """Write the quick_pick task file and an untrained tiny model (with contract.json) for it under `root`."""
    from transformers import AutoTokenizer

    from schemabuild.contract import build_contract, save_contract
    from schemabuild.task import load_task
    from schemabuild.train.tiny import TinyConfig, build_tiny

    tasks = root / "tasks"
    tasks.mkdir(parents=True)
    (tasks / "quick_pick.py").write_text(QUICK_TASK)
    task = load_task("quick_pick", tasks)
    model = build_tiny(task, root / "model", config=TinyConfig(num_layers=2))
    save_contract(build_contract(task, AutoTokenizer.from_pretrained(model), base_model="tiny", adapter=False), model)
    return Quick(task, model, tasks)


@dataclasses.dataclass
class Running:
    url: str
    app: Any
    served: list
    cfg: Any


@contextlib.contextmanager
def running_server(tasks: list, model_dirs: list, **settings) -> Iterator[Running]:
    """Load the models, build the app and serve it on a free loopback port for the duration."""
    from schemabuild.serve.app import ServeConfig, create_app, load_models, serve_in_thread

    cfg = ServeConfig(device="cpu", **settings)
    served = load_models(tasks, cfg, model_dirs=model_dirs)
    app = create_app(served, cfg)
    with serve_in_thread(app) as url:
        yield Running(url, app, served, cfg)


def assert_error(response, status: int, code: str | None = None, param: str | None = "any") -> dict:
    """The response has `status` and an OpenAI-style error body; returns the error object."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    body = response.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"] and "\n" not in err["message"]
    assert isinstance(err["type"], str) and err["type"]
    if code is not None:
        assert err["code"] == code, err
    if param != "any":
        assert err["param"] == param, err
    return err


def gate_decoder(decoder):
    """Hold every decode step of `decoder` until the returned event is set (to fill queues / force timeouts)."""
    import threading

    gate = threading.Event()
    original = decoder.step

    def held(batch, joining=()):
        gate.wait(60)
        return original(batch, joining)

    decoder.step = held
    return gate, lambda: setattr(decoder, "step", original)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The quick_pick task with an untrained tiny model (always completes: an enum and a bool)."""
    return build_quick(tmp_path_factory.mktemp("quick"))


@pytest.fixture(scope="module")
def server(quick):
    """A real server on loopback serving `quick`."""
    with running_server([quick.task], [quick.model_dir]) as srv:
        yield srv


@contextlib.contextmanager
def serve_process(args: list[str], env: dict | None = None, wait_s: float = 180) -> Iterator[tuple[str, Any]]:
    """`schemabuild serve ARGS` as a real process on a free loopback port: yields (url, process) once /healthz
    answers; terminates it afterwards (its output is then `process.output`)."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "schemabuild", "serve", *args, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, f"the server did not answer /healthz within {wait_s:.0f}s"
        yield url, proc
    finally:
        proc.terminate()
        proc.output, _ = proc.communicate(timeout=30)
