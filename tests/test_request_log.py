"""The request log: OpenAI chat JSONL that `synth --from-log` reads, rotated by size, no keys or headers, and
complete after a kill -9 (every line parses, every answer a client got is in it)."""

from __future__ import annotations

import json
import os
import threading

import httpx
import pytest

from tests.serving import build_quick, running_server

CHAT = "/v1/chat/completions"


def test_lines_are_whole_and_rotate_by_size(tmp_path):
    from schemabuild.serve.requestlog import RequestLog

    log = RequestLog(tmp_path / "logs" / "req.jsonl", max_bytes=1000)
    rows = [{"messages": [{"role": "user", "content": f"message {i} " + "é" * (i % 7)}], "n": i} for i in range(60)]
    threads = [threading.Thread(target=lambda chunk=rows[k::4]: [log.write(r) for r in chunk]) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    files = sorted((tmp_path / "logs").iterdir())
    assert len(files) > 2 and {f.name for f in files} >= {"req.jsonl", "req.jsonl.1", "req.jsonl.2"}
    got = []
    for f in files:
        assert f.stat().st_size <= 1000
        got += [json.loads(line) for line in f.read_text().splitlines()]
    assert sorted(got, key=lambda r: r["n"]) == rows  # nothing lost, torn or doubled across rotations


def test_served_requests_are_logged_for_synth_from_log(tmp_path):
    from schemabuild.synth import read_log_inputs

    quick = build_quick(tmp_path / "q")
    path = tmp_path / "requests.jsonl"
    with running_server([quick.task], [quick.model_dir], api_key="secret-key-123", log_requests=str(path)) as srv:
        auth = {"Authorization": "Bearer secret-key-123", "X-Custom": "hdr-value-456"}
        chat = httpx.post(srv.url + CHAT, headers=auth, timeout=60, json={
            "model": "quick_pick", "messages": [{"role": "user", "content": "play some jazz"}]}).json()
        with httpx.stream("POST", srv.url + CHAT, headers=auth, timeout=60, json={
                "model": "quick_pick", "stream": True, "messages": [{"role": "user", "content": "weather in Oslo"}]}) as r:
            r.read()
        pred = httpx.post(srv.url + "/v1/tasks/quick_pick/predict", headers=auth, timeout=60,
                          json={"input": "timer 5 minutes"}).json()
        refused = httpx.post(srv.url + CHAT, headers=auth, timeout=60, json={"model": "quick_pick", "messages": []})
        assert refused.status_code == 400
    text = path.read_text()
    assert "secret-key-123" not in text and "hdr-value-456" not in text and "Bearer" not in text
    rows = [json.loads(line) for line in text.splitlines()]
    assert [r["route"] for r in rows] == ["chat", "chat", "predict"]  # answered requests only
    assert rows[0]["messages"][-1] == {"role": "assistant", "content": chat["choices"][0]["message"]["content"]}
    assert rows[0]["id"] == chat["id"]
    quick.task.validate_output(rows[1]["messages"][-1]["content"])
    assert json.loads(rows[2]["messages"][-1]["content"]) == pred["output"]
    assert read_log_inputs(path) == ["play some jazz", "weather in Oslo", "timer 5 minutes"]


@pytest.mark.slow
def test_kill_9_during_load_loses_no_answered_request(tmp_path):
    """`schemabuild serve --log-requests` as a real process, killed with SIGKILL under load from 8 clients:
    every line of the log parses, and every request a client got a 200 for is in it."""
    import shutil
    import signal
    import socket
    import subprocess
    import sys
    import time

    quick = build_quick(tmp_path / "q")
    run = tmp_path / "runs" / "quick_pick" / "r1"
    shutil.copytree(quick.model_dir, run / "model")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "requests.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SCHEMABUILD_TASKS": str(quick.tasks_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "schemabuild", "serve", "quick_pick", "--run", "r1",
                             "--runs-dir", str(tmp_path / "runs"), "--port", str(port), "--device", "cpu",
                             "--log-requests", str(log), "--log-max-bytes", "5000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    answered: list[str] = []
    stop = threading.Event()

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            for i in range(10_000):
                if stop.is_set():
                    return
                text = f"client {k} message {i} play jazz"
                try:
                    r = c.post(CHAT, json={"model": "quick_pick", "stream": i % 2 == 1,
                                           "messages": [{"role": "user", "content": text}]})
                    body = r.text
                except httpx.HTTPError:
                    return  # the server died under this request: not answered
                if r.status_code == 200 and (i % 2 == 0 or "[DONE]" in body):
                    answered.append(text)

    try:
        for _ in range(1200):
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
            assert proc.poll() is None
        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        while len(answered) < 40:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
    for t in threads:
        t.join(60)
    logged = []
    files = sorted(tmp_path.glob("requests.jsonl*"))
    assert len(files) >= 2  # rotation happened under load
    for f in files:
        for line in f.read_bytes().split(b"\n")[:-1]:
            logged.append(json.loads(line))  # every line whole
        assert f.read_bytes().endswith(b"\n")
    users = {row["messages"][0]["content"] for row in logged}
    missing = [t for t in answered if t not in users]
    assert len(answered) >= 40 and not missing, missing[:5]
