"""Predictor: loading through the contract (full weights, PEFT adapters, bases), validated predictions, confidence."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from schemabuild.contract import CONTRACT_FILE, ContractError, build_contract, save_contract


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def predictor(tiny_model_dir, tool_picker):
    from schemabuild.predictor import Predictor

    return Predictor.from_model_dir(tool_picker, tiny_model_dir, device="cpu")


TEXTS = ["billy play some Daft Punk", "weather forecast for Tokyo", "thanks billy you're the best"]


def test_predict_returns_validated_output_or_reason(predictor, tool_picker):
    p = predictor.predict(TEXTS[0], max_tokens=48)
    assert p.text.startswith('{"tool":"')
    assert p.prompt_tokens > 10 and 0 < p.completion_tokens <= 48 and p.latency_ms > 0
    if p.finish_reason == "stop":
        assert isinstance(p.output, tool_picker.output) and p.error is None
    else:
        assert p.output is None and "48 tokens" in p.error
    assert set(p.confidence) <= {"tool", "query"} and "tool" in p.confidence
    assert all(0.0 < c <= 1.0 for c in p.confidence.values())
    short = predictor.predict(TEXTS[0], max_tokens=4)
    assert short.finish_reason == "length" and short.output is None and short.completion_tokens == 4


def test_predict_many_matches_predict(predictor):
    one_by_one = [predictor.predict(t, max_tokens=24).text for t in TEXTS]
    many = predictor.predict_many(TEXTS, batch_size=2, progress=False, max_tokens=24)
    assert [p.text for p in many] == one_by_one


def test_properties_and_generate_raw(predictor, tool_picker):
    assert predictor.task is tool_picker
    assert predictor.contract["task"] == "tool_picker"
    assert predictor.decoder.stop_ids == predictor.contract["stop_ids"]
    [res] = predictor.generate_raw([predictor.request(TEXTS[1], max_tokens=6)])
    assert res.completion_tokens <= 6 and res.prompt_tokens == len(predictor.request(TEXTS[1]).prompt_ids)


def test_value_spans_and_confidence_product():
    from schemabuild.inference.request import Result
    from schemabuild.inference.task_model import field_confidence, value_spans

    text = '{"tool":"web.search","query":"a \\"b\\" c","n":[1,{"x":null}]}'
    spans = value_spans(text)
    assert {k: text[s:e] for k, (s, e) in spans.items()} == {
        "tool": '"web.search"', "query": '"a \\"b\\" c"', "n": '[1,{"x":null}]'}

    class CharTokenizer:  # one token per character: token i is text[i]
        def decode(self, ids, skip_special_tokens=False):
            return "".join(text[i] for i in ids)

    ids = list(range(len(text))) + [999]
    lps = [math.log(0.5) if text[s] == "w" else 0.0 for s in range(len(text))] + [0.0]
    res = Result(ids, text, "stop", lps, 1, 1, len(ids))
    conf = field_confidence(CharTokenizer(), res, stop_ids=[999])
    assert conf["tool"] == pytest.approx(0.5) and conf["query"] == 1.0 and conf["n"] == 1.0


# ---- loading ---------------------------------------------------------------------------------------

def test_contract_mismatch_and_missing_contract(tiny_model_dir, tool_picker, tmp_path):
    from schemabuild.predictor import Predictor

    bad = tmp_path / "model"
    shutil.copytree(tiny_model_dir, bad)
    contract = json.loads((bad / CONTRACT_FILE).read_text())
    save_contract({**contract, "schema_hash": "0" * 16}, bad)
    with pytest.raises(ContractError, match="output schema changed"):
        Predictor.from_model_dir(tool_picker, bad)
    save_contract({**contract, "stop_ids": [0]}, bad)
    with pytest.raises(ContractError, match="end-of-turn ids"):
        Predictor.from_model_dir(tool_picker, bad)
    (bad / CONTRACT_FILE).unlink()
    with pytest.raises(ContractError, match="contract.json is missing"):
        Predictor.from_model_dir(tool_picker, bad)


def test_from_run_and_from_base(tiny_model_dir, tool_picker, tmp_path, predictor):
    from schemabuild.predictor import Predictor
    from schemabuild.runs import new_run
    from schemabuild.task import TaskError

    with pytest.raises(TaskError, match="no runs for task 'tool_picker'"):
        Predictor.from_run(tool_picker)
    run = new_run("tool_picker")
    with pytest.raises(TaskError, match="no model/ folder"):
        Predictor.from_run(tool_picker)
    shutil.copytree(tiny_model_dir, run / "model")
    by_run = Predictor.from_run(tool_picker, device="cpu")
    expected = predictor.predict(TEXTS[2], max_tokens=20).text
    assert by_run.predict(TEXTS[2], max_tokens=20).text == expected

    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base, ignore=shutil.ignore_patterns(CONTRACT_FILE))
    from_base = Predictor.from_base(tool_picker, base, device="cpu")
    assert from_base.contract["base_model"] == str(base)
    # the un-tuned base is prompted with the full instructions, the fine-tuned model with its student prompt
    assert from_base.contract["prompt"] == "full" and by_run.contract["prompt"] == "student"
    from schemabuild.contract import encode_prompt

    full_ids = encode_prompt(from_base.tokenizer, tool_picker.instructions, TEXTS[2])
    assert from_base.request(TEXTS[2]).prompt_ids == full_ids != by_run.request(TEXTS[2]).prompt_ids
    same_weights = Predictor(tool_picker, by_run.decoder.model, by_run.tokenizer, from_base.contract, device="cpu")
    assert from_base.predict(TEXTS[2], max_tokens=20).text == same_weights.predict(TEXTS[2], max_tokens=20).text
    with pytest.raises((TaskError, ContractError)):
        Predictor.from_base(tool_picker, tmp_path / "nowhere")


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tool_picker, tmp_path_factory):
    """Two random LoRA adapters on the tiny base, saved like training saves them (with contract.json)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    out = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        cfg = LoraConfig(r=4, lora_alpha=64, target_modules="all-linear", init_lora_weights=False)
        model = get_peft_model(base, cfg)
        path = tmp_path_factory.mktemp(f"adapter{seed}") / "model"
        model.save_pretrained(path)
        tok.save_pretrained(path)
        save_contract(build_contract(tool_picker, tok, base_model=str(tiny_model_dir), adapter=True), path)
        out.append(path)
    return out


def test_adapter_model_and_per_request_adapters(adapters, tiny_model_dir, tool_picker, predictor):
    from peft import PeftModel

    from schemabuild.inference.decoder import Decoder
    from schemabuild.predictor import Predictor

    from schemabuild.models import load_causal_lm as _load_causal_lm

    a = Predictor.from_model_dir(tool_picker, adapters[0], device="cpu")
    b = Predictor.from_model_dir(tool_picker, adapters[1], device="cpu")
    assert not isinstance(a.decoder.model, PeftModel)  # a lone adapter is merged into its base for inference
    texts = [a.predict(TEXTS[0], max_tokens=16).text, b.predict(TEXTS[0], max_tokens=16).text,
             predictor.predict(TEXTS[0], max_tokens=16).text]
    assert len(set(texts)) == 3  # the adapters change the outputs

    # One base, two named adapters (unmerged), chosen per request inside one generate call; same answers as merged.
    shared = PeftModel.from_pretrained(_load_causal_lm(tiny_model_dir, "cpu"), str(adapters[0])).eval()
    shared.load_adapter(str(adapters[1]), adapter_name="second")
    dec = Decoder(shared, a.tokenizer, a.contract["stop_ids"])
    req_a, req_b = a.request(TEXTS[0], max_tokens=16), a.request(TEXTS[0], max_tokens=16)
    req_a.adapter, req_b.adapter = "default", "second"
    got = dec.generate([req_b, req_a])
    assert [r.text for r in got] == [texts[1], texts[0]]
