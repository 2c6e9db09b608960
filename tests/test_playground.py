"""The playground page: served at /, and in headless Chromium it runs a prediction and shows the JSON."""

from __future__ import annotations

import fcntl
import html
import json
import os
import re
import select
import subprocess
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from tests.serving import quick, running_server, server  # noqa: F401  (quick, server: fixtures)

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)")


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4, NUL-separated JSON).

    `--dump-dom` with a virtual-time budget cannot wait for a streamed response (virtual time runs out while the
    body is still arriving), so the page is loaded and then polled in real time until its scripts say they are done.
    """

    def __init__(self, tmp_path):
        to_child, self._to_child = os.pipe()
        self._from_child, from_child = os.pipe()
        # the child's ends moved above fd 10 first, so that wiring them to 3 and 4 can never overwrite one with the other
        to_child, from_child = (self._high(fd) for fd in (to_child, from_child))

        def wire():  # in the child: the protocol wants commands on fd 3 and answers on fd 4 (dup2 makes them inheritable)
            os.dup2(to_child, 3)
            os.dup2(from_child, 4)

        cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium'}", "--remote-debugging-pipe",
               "about:blank"]
        # close_fds=False keeps the 3 and 4 that `wire` makes (pass_fds would need them open in this process too);
        # Python's own descriptors are not inheritable, so nothing else leaks
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=wire, close_fds=False)
        os.close(to_child)
        os.close(from_child)
        self._buffer, self._next_id, self.session = b"", 0, None

    @staticmethod
    def _high(fd: int) -> int:
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(fd)
        return high

    def call(self, method: str, params: dict | None = None, timeout: float = 30.0) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session:
            message["sessionId"] = self.session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                answer = json.loads(raw)
                if answer.get("id") == self._next_id:
                    assert "error" not in answer, answer["error"]
                    return answer["result"]
            left = deadline - time.monotonic()
            assert left > 0, f"Chromium did not answer {method} in {timeout} s"
            ready, _, _ = select.select([self._from_child], [], [], left)
            if ready:
                chunk = os.read(self._from_child, 1 << 16)
                assert chunk, "Chromium closed the DevTools pipe"
                self._buffer += chunk

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})["result"].get("value")

    def close(self):
        self.proc.kill()
        self.proc.wait(timeout=30)
        os.close(self._to_child)
        os.close(self._from_child)


def dump_dom(url: str, tmp_path, timeout: float = 90.0) -> str:
    """The page's DOM once its scripts have finished (`data-state` on <body> is done or error), or at the timeout."""
    browser = Browser(tmp_path)
    try:
        page = next(t for t in browser.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        browser.session = browser.call("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})[
            "sessionId"]
        browser.call("Page.navigate", {"url": url})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if browser.evaluate("document.body ? document.body.dataset.state || '' : ''") in ("done", "error"):
                break
            time.sleep(0.1)
        return browser.evaluate("document.documentElement.outerHTML")
    finally:
        browser.close()


def element_text(dom: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>(.*?)</', dom, re.S)
    assert match, f"no #{element_id} in the page"
    return html.unescape(match.group(1))


def test_playground_page_is_served(server):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'id="task"' in r.text and "/predict" in r.text and 'id="key"' in r.text
    assert "stream: true" in r.text and "getReader()" in r.text  # the answer is read as it streams


@pytest.mark.browser
@needs_chromium
def test_playground_shows_a_prediction_and_its_latency(server, quick, tmp_path):
    query = urlencode({"task": "quick_pick", "q": "weather in Oslo"})
    dom = dump_dom(f"{server.url}/?{query}", tmp_path)
    assert 'data-state="done"' in dom, element_text(dom, "error")
    shown = json.loads(element_text(dom, "output"))
    quick.task.validate_output(shown)
    direct = httpx.post(server.url + "/v1/tasks/quick_pick/predict", json={"input": "weather in Oslo"}).json()
    assert shown == direct["output"]  # the page shows what the API answers
    assert re.search(r"model [\d.]+ ms", element_text(dom, "meta"))
    assert set(json.loads(element_text(dom, "confidence"))) == {"tool", "urgent"}
    assert '<option value="quick_pick">quick_pick</option>' in dom


@pytest.mark.browser
@needs_chromium
def test_playground_says_when_the_server_wants_a_key(quick, tmp_path):
    with running_server([quick.task], [quick.model_dir], api_key="k") as srv:
        dom = dump_dom(f"{srv.url}/?{urlencode({'task': 'quick_pick', 'q': 'hi'})}", tmp_path)
    assert 'data-state="error"' in dom
    assert "API key" in element_text(dom, "error")
