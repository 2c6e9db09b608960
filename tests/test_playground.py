"""The playground page: served at /, and in headless Chromium it runs a prediction and shows the JSON."""

from __future__ import annotations

import html
import json
import re
import subprocess
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from tests.serving import quick, running_server, server  # noqa: F401  (quick, server: fixtures)

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)")


def dump_dom(url: str, tmp_path) -> str:
    """The page's DOM after its scripts ran (virtual time waits for the page's fetches)."""
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=30000",
           "--dump-dom", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


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
