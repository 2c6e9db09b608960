"""The server end to end on loopback: predict, chat completions, models, health, metrics, a bounded load test,
auth, the full queue (429), the request timeout (504), adapters sharing one base, startup errors, and
`schemabuild predict` / `schemabuild serve` through the CLI."""

from __future__ import annotations

import asyncio
import json
import re
import shutil

import httpx
import jsonschema
import pytest
from click.testing import CliRunner

from tests.serving import assert_error, gate_decoder, quick, running_server, server  # noqa: F401  (quick, server: fixtures)

PREDICT = "/v1/tasks/quick_pick/predict"


def post(url: str, path: str, body: dict, **kw) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=120, **kw)


# ---- the routes ------------------------------------------------------------------------------------

def test_predict_returns_the_task_output_with_latency_usage_and_confidence(server, quick):
    r = post(server.url, PREDICT, {"input": "play some jazz"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"output", "latency_ms", "finish_reason", "usage", "confidence"}
    quick.task.validate_output(body["output"])
    assert body["finish_reason"] == "stop"
    assert body["latency_ms"] > 0
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert set(body["confidence"]) == {"tool", "urgent"}
    assert all(0 < v <= 1 for v in body["confidence"].values())


def test_client_predict_returns_the_output_model(server, quick):
    from schemabuild import Client
    from schemabuild.client import ClientError
    from schemabuild.task import TaskError

    with Client(server.url, tasks_dir=quick.tasks_dir) as client:
        pick = client.predict(quick.task, "timer 5 minutes")
        assert isinstance(pick, quick.task.output)
        assert client.last["usage"]["completion_tokens"] > 0
        by_name = client.predict("quick_pick", "timer 5 minutes")  # the task file is loaded by name
        assert isinstance(by_name, client.task("quick_pick").output)
        assert by_name.model_dump() == pick.model_dump()
        chat = client.chat(quick.task, "timer 5 minutes")
        assert chat == pick  # same prompt, greedy: both routes give the same answer
        assert client.models() == ["quick_pick"]
        with pytest.raises(ClientError) as err:
            client.chat("no_such_task", "hi")
        assert err.value.status == 404 and err.value.code == "model_not_found"
        with pytest.raises(TaskError, match="no task file"):
            client.predict("no_such_task", "hi")


def test_chat_completion_is_a_proper_chat_completion_object(server, quick):
    r = post(server.url, "/v1/chat/completions",
             {"model": "quick_pick", "messages": [{"role": "user", "content": "weather in Oslo"}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "quick_pick" and isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "stop"
    quick.task.validate_output(choice["message"]["content"])
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]


def test_chat_prompts_are_the_contract_prompts(server, quick):
    from schemabuild.contract import encode_prompt, system_prompt
    from schemabuild.serve.bodies import ChatMessage
    from schemabuild.serve.serving import chat_prompt_ids as _chat_prompt_ids

    [s] = server.served
    tok = s.tokenizer
    lone = _chat_prompt_ids(s, [ChatMessage(role="user", content="play jazz")])
    own = system_prompt(quick.task, s.contract)  # the model's student prompt, as trained
    assert s.contract["prompt"] == "student" and own != quick.task.instructions
    assert lone == encode_prompt(tok, own, "play jazz")
    as_told = _chat_prompt_ids(s, [ChatMessage(role="system", content=quick.task.instructions),
                                   ChatMessage(role="user", content="play jazz")])
    assert as_told == lone  # a client sending the task's full instructions gets the trained prompt
    parts = _chat_prompt_ids(s, [ChatMessage.model_validate(
        {"role": "user", "content": [{"type": "text", "text": "play "}, {"type": "text", "text": "jazz"}]})])
    assert parts == lone
    own_system = _chat_prompt_ids(s, [ChatMessage(role="system", content="Be brief."),
                                      ChatMessage(role="user", content="play jazz")])
    assert own_system == encode_prompt(tok, "Be brief.", "play jazz")
    turns = _chat_prompt_ids(s, [ChatMessage(role="user", content="hi"), ChatMessage(role="assistant", content="{}"),
                                 ChatMessage(role="user", content="play jazz")])
    text = tok.decode(turns)
    assert text.startswith(tok.decode(encode_prompt(tok, own, "hi"))[: -len("<|im_start|>assistant\n")])
    assert text.endswith("play jazz<|im_end|>\n<|im_start|>assistant\n")


def test_models_and_healthz(server, quick):
    health = httpx.get(server.url + "/healthz").json()
    assert health == {"status": "ok", "models": ["quick_pick"]}
    models = httpx.get(server.url + "/v1/models").json()
    assert models["object"] == "list"
    [card] = models["data"]
    assert card["id"] == "quick_pick" and card["object"] == "model"
    assert card["schema"] == quick.task.output.model_json_schema()
    assert httpx.get(server.url + "/v1/models/quick_pick").json()["id"] == "quick_pick"
    assert_error(httpx.get(server.url + "/v1/models/nope"), 404, "model_not_found", "model")


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_count_requests_tokens_and_batches(server):
    before = _samples(httpx.get(server.url + "/metrics").text)
    for text in ("play some jazz", "gif of a dancing cat", "thanks billy"):
        assert post(server.url, PREDICT, {"input": text}).status_code == 200
    assert post(server.url, PREDICT, {"input": 5}).status_code == 400
    page = httpx.get(server.url + "/metrics")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
    after = _samples(page.text)
    ok = 'schemabuild_http_requests_total{route="/v1/tasks/{task}/predict",method="POST",status="200"}'
    bad = ok.replace('"200"', '"400"')
    assert after[ok] - before.get(ok, 0) == 3
    assert after[bad] - before.get(bad, 0) == 1
    count = 'schemabuild_http_request_duration_seconds_count{route="/v1/tasks/{task}/predict"}'
    inf = 'schemabuild_http_request_duration_seconds_bucket{route="/v1/tasks/{task}/predict",le="+Inf"}'
    assert after[count] == after[inf] >= 4
    assert after['schemabuild_tokens_total{model="quick_pick",kind="completion"}'] > 0
    assert after['schemabuild_engine_queue_depth{engine="quick_pick"}'] == 0
    assert after['schemabuild_engine_requests{engine="quick_pick"}'] >= 3
    assert any(k.startswith('schemabuild_engine_batch_sizes{engine="quick_pick",size=') for k in after)
    assert "# TYPE schemabuild_http_request_duration_seconds histogram" in page.text


# ---- load ------------------------------------------------------------------------------------------

TEXTS = ["billy play some Daft Punk", "weather forecast for Tokyo", "gif of a dancing cat", "thanks billy",
         "set a timer for 10 minutes", "look up the release date of the new zelda game", "post an image of a red panda",
         "can you find a yt video about how to bake sourdough bread"]


@pytest.mark.parametrize("n", [pytest.param(320, id="320"), pytest.param(2000, id="2000", marks=pytest.mark.slow)])
def test_bounded_load_on_loopback_has_no_5xx_and_every_body_is_schema_valid(server, quick, n):
    schema = quick.task.output.model_json_schema()

    async def one(client, sem, i):
        async with sem:
            text = TEXTS[i % len(TEXTS)] + f" #{i}"
            if i % 2:
                r = await client.post(PREDICT, json={"input": text})
                return r.status_code, (r.json().get("output") if r.status_code == 200 else r.text)
            r = await client.post("/v1/chat/completions",
                                  json={"model": "quick_pick", "messages": [{"role": "user", "content": text}]})
            if r.status_code != 200:
                return r.status_code, r.text
            return r.status_code, json.loads(r.json()["choices"][0]["message"]["content"])

    async def main():
        sem = asyncio.Semaphore(32)
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=server.url, timeout=300, limits=limits) as client:
            return await asyncio.gather(*(one(client, sem, i) for i in range(n)))

    stats_before = server.served[0].engine.stats()
    results = asyncio.run(main())
    statuses = [s for s, _ in results]
    assert not [r for r in results if r[0] >= 500], [r for r in results if r[0] >= 500][:3]
    assert statuses.count(200) == n, [r for r in results if r[0] != 200][:3]
    for _, output in results:
        jsonschema.validate(output, schema)
        quick.task.validate_output(output)
    stats = server.served[0].engine.stats()
    assert stats["requests"] - stats_before["requests"] == n
    assert max(int(k) for k in stats["batch_sizes"]) > 1  # concurrent requests were batched together
    assert httpx.get(server.url + "/healthz").status_code == 200


# ---- auth, queue, timeout --------------------------------------------------------------------------

def test_api_key_is_required_on_every_route_but_healthz(quick):
    with running_server([quick.task], [quick.model_dir], api_key="s3cret") as srv:
        good = {"Authorization": "Bearer s3cret"}
        assert httpx.get(srv.url + "/healthz").status_code == 200
        assert httpx.get(srv.url + "/").status_code == 200  # the page itself asks for the key
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"},
                        {"Authorization": "s3cret"}):
            r = httpx.get(srv.url + "/v1/models", headers=headers)
            assert_error(r, 401, "invalid_api_key")
            assert r.headers["www-authenticate"] == "Bearer"
        assert_error(httpx.get(srv.url + "/metrics"), 401, "invalid_api_key")
        metrics = httpx.get(srv.url + "/metrics", headers=good).text
        assert 'schemabuild_http_requests_total{route="/v1/models",method="GET",status="401"} 4' in metrics
        assert_error(post(srv.url, PREDICT, {"input": "hi"}), 401, "invalid_api_key")
        assert_error(post(srv.url, "/v1/chat/completions", {"model": "quick_pick"}), 401, "invalid_api_key")
        assert httpx.get(srv.url + "/v1/models", headers=good).status_code == 200
        r = post(srv.url, PREDICT, {"input": "play some jazz"}, headers=good)
        assert r.status_code == 200
        quick.task.validate_output(r.json()["output"])


def test_api_key_defaults_to_the_environment(monkeypatch):
    from schemabuild.config import ConfigError
    from schemabuild.serve.app import ServeConfig

    assert ServeConfig().api_key is None
    monkeypatch.setenv("SCHEMABUILD_API_KEY", "from-env")
    assert ServeConfig().api_key == "from-env"
    assert ServeConfig(api_key="flag").api_key == "flag"
    with pytest.raises(ConfigError, match="--api-key"):
        ServeConfig(api_key="  ")
    with pytest.raises(ConfigError, match="--port"):
        ServeConfig(port=70000)
    with pytest.raises(ConfigError, match="--max-queue"):
        ServeConfig(max_queue=0)


def test_full_queue_answers_429_with_retry_after_and_the_server_recovers(quick):
    with running_server([quick.task], [quick.model_dir], max_queue=2, max_batch=1) as srv:
        gate, ungate = gate_decoder(srv.served[0].decoder)

        async def main():
            async with httpx.AsyncClient(base_url=srv.url, timeout=120) as client:
                tasks = [asyncio.create_task(client.post(PREDICT, json={"input": f"play jazz {i}"}))
                         for i in range(12)]
                # The requests beyond batch + queue are refused at once, while the decoder is held.
                for _ in range(600):
                    if sum(t.done() for t in tasks) >= 12 - 3:
                        break
                    await asyncio.sleep(0.05)
                gate.set()
                return await asyncio.gather(*tasks)

        responses = asyncio.run(main())
        ungate()
        refused = [r for r in responses if r.status_code == 429]
        served = [r for r in responses if r.status_code == 200]
        assert len(refused) + len(served) == 12
        assert len(refused) >= 9 and 1 <= len(served) <= 3
        for r in refused:
            assert_error(r, 429, "queue_full")
            assert r.headers["retry-after"] == "1"
        for r in served:
            quick.task.validate_output(r.json()["output"])
        r = post(srv.url, PREDICT, {"input": "play some jazz"})
        assert r.status_code == 200
        quick.task.validate_output(r.json()["output"])


def test_request_timeout_answers_504_and_does_not_wedge_the_batcher(quick):
    with running_server([quick.task], [quick.model_dir], request_timeout_s=0.3) as srv:
        gate, ungate = gate_decoder(srv.served[0].decoder)
        err = assert_error(post(srv.url, PREDICT, {"input": "play jazz"}), 504, "timeout")
        assert err["type"] == "timeout_error" and "--request-timeout-s" in err["message"]
        gate.set()
        ungate()
        srv.cfg.request_timeout_s = 120
        r = post(srv.url, "/v1/chat/completions",
                 {"model": "quick_pick", "messages": [{"role": "user", "content": "weather in Oslo"}]})
        assert r.status_code == 200
        quick.task.validate_output(r.json()["choices"][0]["message"]["content"])


def test_a_long_answer_still_decoding_is_never_a_timeout(quick):
    """--request-timeout-s bounds time without progress (queue wait, or the gap between two decode steps), not the
    whole answer: with 0.1 s steps and a 0.5 s timeout, a 40-character string takes well over 0.5 s and is a 200,
    streamed or not."""
    import time

    schema = {"type": "object", "properties": {"s": {"type": "string", "minLength": 40, "maxLength": 40}},
              "required": ["s"], "additionalProperties": False}
    body = {"model": "quick_pick", "messages": [{"role": "user", "content": "a long one"}], "max_tokens": 120,
            "response_format": {"type": "json_schema", "json_schema": {"name": "long", "schema": schema}}}
    with running_server([quick.task], [quick.model_dir], request_timeout_s=0.5, compile_timeout_s=120) as srv:
        decoder = srv.served[0].decoder
        original, steps = decoder.step, []

        def slow(batch, joining=()):
            time.sleep(0.1)
            steps.append(1)
            return original(batch, joining)

        decoder.step = slow
        try:
            t0 = time.monotonic()
            r = post(srv.url, "/v1/chat/completions", body)
            took = time.monotonic() - t0
            assert r.status_code == 200, r.text
            assert len(json.loads(r.json()["choices"][0]["message"]["content"])["s"]) == 40
            assert took > 1.0 and len(steps) >= 10, (took, len(steps))
            with httpx.stream("POST", srv.url + "/v1/chat/completions", json={**body, "stream": True},
                              timeout=120) as resp:
                lines = [ln for ln in resp.iter_lines() if ln.startswith("data: ")]
            assert lines[-1] == "data: [DONE]" and '"finish_reason": "stop"' in lines[-2], lines[-3:]
        finally:
            decoder.step = original


# ---- loading ---------------------------------------------------------------------------------------

def _second_task(tmp_path, monkeypatch):
    """A tasks folder with tool_picker and `tool_picker_b` (same output model, other instructions)."""
    from tests.conftest import TASKS

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    source = (TASKS / "tool_picker.py").read_text()
    (tasks / "tool_picker.py").write_text(source)
    (tasks / "tool_picker_b.py").write_text(
        source.replace('name="tool_picker"', 'name="tool_picker_b"').replace("You are Billy", "You are Billy B"))
    monkeypatch.setenv("SCHEMABUILD_TASKS", str(tasks))
    from schemabuild.task import load_task

    return load_task("tool_picker", tasks), load_task("tool_picker_b", tasks)


def test_adapters_on_one_base_share_it_and_each_answers(tmp_path, monkeypatch):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from schemabuild.contract import build_contract, save_contract
    from schemabuild.train.tiny import TinyConfig, build_tiny
    from schemabuild.serve.app import create_app, serve_in_thread, ServeConfig, load_models

    task_a, task_b = _second_task(tmp_path, monkeypatch)
    base = build_tiny(task_a, tmp_path / "base", config=TinyConfig(num_layers=2))
    tok = AutoTokenizer.from_pretrained(base)
    dirs = []
    for i, task in enumerate((task_a, task_b)):
        torch.manual_seed(i)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                               LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        out = tmp_path / f"adapter_{task.name}"
        model.save_pretrained(out)
        tok.save_pretrained(out)
        save_contract(build_contract(task, tok, base_model=str(base), adapter=True), out)
        dirs.append(out)
    enum = {"type": "json_schema", "json_schema": {"name": "pick", "schema": {
        "type": "object", "properties": {"tool": {"enum": ["music.play", "no_tool"]}}, "required": ["tool"]}}}
    by_mode = []
    for mixed in (False, True):  # --mixed-adapters: both adapters' rows in one running batch, same answers
        cfg = ServeConfig(device="cpu", mixed_adapters=mixed)
        a, b = load_models([task_a, task_b], cfg, model_dirs=dirs)
        assert a.decoder is b.decoder and a.decoder.mixed is mixed  # one base model in memory
        assert (a.adapter, b.adapter) == ("tool_picker", "tool_picker_b")
        assert set(a.decoder.model.peft_config) == {"tool_picker", "tool_picker_b"}
        with serve_in_thread(create_app([a, b], cfg)) as url:
            answers = []
            for name in ("tool_picker", "tool_picker_b"):
                r = post(url, "/v1/chat/completions", {"model": name, "response_format": enum,
                                                       "messages": [{"role": "user", "content": "play jazz"}]})
                assert r.status_code == 200, r.text
                answers.append(json.loads(r.json()["choices"][0]["message"]["content"]))
            assert all(x["tool"] in ("music.play", "no_tool") for x in answers)
            assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == ["tool_picker", "tool_picker_b"]
        by_mode.append(answers)
    assert by_mode[0] == by_mode[1]


def test_a_model_whose_contract_does_not_match_is_a_clear_startup_error(tmp_path, tiny_model_dir, tool_picker):
    from schemabuild.cli import main
    from schemabuild.contract import ContractError
    from schemabuild.serve.app import ServeConfig, load_models

    model = tmp_path / "runs" / "tool_picker" / "r1" / "model"
    shutil.copytree(tiny_model_dir, model)
    contract = json.loads((model / "contract.json").read_text())
    contract["schema_hash"] = "0000"
    (model / "contract.json").write_text(json.dumps(contract))
    with pytest.raises(ContractError, match=re.escape(str(model)) + ".*output schema changed"):
        load_models([tool_picker], ServeConfig(device="cpu"), model_dirs=[model])
    result = CliRunner().invoke(main, ["serve", "tool_picker", "--run", "r1", "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code != 0
    assert "output schema changed" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_serve_without_a_trained_run_or_with_run_for_two_tasks_is_a_one_line_error(tmp_path, tool_picker):
    from schemabuild.cli import main
    from schemabuild.config import ConfigError
    from schemabuild.serve.app import ServeConfig, load_models

    result = CliRunner().invoke(main, ["serve", "tool_picker", "--runs-dir", str(tmp_path / "empty")])
    assert result.exit_code != 0 and "schemabuild train tool_picker" in result.output
    with pytest.raises(ConfigError, match="--run: only valid when serving one task"):
        load_models([tool_picker, tool_picker], ServeConfig(run="x"))
    with pytest.raises(ConfigError, match="--port"):
        ServeConfig(port=-1)


# ---- the shipped task on its trained run -----------------------------------------------------------

def _local(trained_run, tool_picker, text: str):
    """What the trained model answers without any server (the Predictor, same contract), in the precision `serve`
    and `predict` choose by default (bf16 on a CPU with avx512_bf16: its confidences differ from fp32's by ~1%)."""
    from schemabuild.predictor import Predictor

    return Predictor.from_model_dir(tool_picker, trained_run / "model", device="cpu", precision="auto").predict(text)


@pytest.mark.slow
def test_trained_tool_picker_serves_exactly_what_the_predictor_predicts(trained_run, tool_picker):
    """Through HTTP and the batching engine, the answer is byte-identical to local prediction."""
    text = "billy play some Daft Punk"
    local = _local(trained_run, tool_picker, text)
    with running_server([tool_picker], [trained_run / "model"]) as srv:
        r = post(srv.url, "/v1/chat/completions", {"model": "tool_picker", "messages": [{"role": "user", "content": text}]})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert (choice["message"]["content"], choice["finish_reason"]) == (local.text, local.finish_reason)
        r = post(srv.url, "/v1/tasks/tool_picker/predict", {"input": text})
    if local.output is not None:
        assert r.status_code == 200, r.text
        assert r.json()["output"] == local.output.model_dump(mode="json")
        assert r.json()["confidence"] == pytest.approx(local.confidence, rel=1e-4)
    else:  # the model did not finish within max_tokens: a clear 422, never a 5xx
        assert_error(r, 422, "output_truncated", "max_tokens")


# ---- the CLI ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_predict_runs_the_trained_model_locally(trained_run, tool_picker):
    from schemabuild.cli import main

    root = trained_run.parent.parent
    text = "weather forecast for Tokyo"
    local = _local(trained_run, tool_picker, text)
    result = CliRunner().invoke(main, ["predict", "tool_picker", text, "--run", str(trained_run), "--runs-dir", str(root)])
    if local.output is not None:
        assert result.exit_code == 0, result.output
        assert tool_picker.validate_output(result.stdout.strip()) == local.output
    else:  # an undertrained model: one line naming why, non-zero exit
        assert result.exit_code != 0 and "no valid output" in result.output


@pytest.mark.slow
def test_cli_serve_answers_over_http(quick, tmp_path):
    """`schemabuild serve` as a real process: it binds loopback, answers, and stops on SIGTERM."""
    from tests.serving import serve_process

    run = tmp_path / "runs" / "quick_pick" / "r1"
    shutil.copytree(quick.model_dir, run / "model")
    args = ["quick_pick", "--run", "r1", "--runs-dir", str(tmp_path / "runs"), "--device", "cpu"]
    with serve_process(args, {"SCHEMABUILD_TASKS": str(quick.tasks_dir)}) as (url, proc):
        r = post(url, PREDICT, {"input": "play some jazz"})
        assert r.status_code == 200, r.text
        quick.task.validate_output(r.json()["output"])
    out = proc.output
    assert f"serving quick_pick at {url}" in out
