"""Our decode loop on llama.cpp's forward pass (`inference/llamacpp.py`, `--engine llamacpp`): the same answers as the
torch engine on an f32 GGUF of the same model; batching, speculation, prefix reuse and chunked prefill change
nothing; the server answers on it; a setup it cannot serve is one clear error.

Skipped only when llama-cpp-python is not installed (CI builds it: .ci/run).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from schemabuild.contract import encode_prompt, grammar_schema, load_contract, prompt_prefix, shared_prefix_len
from tests.serving import build_quick, running_server

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["billy play some Daft Punk", "what's the weather in Oslo tomorrow", "set a timer for ten minutes",
         "thanks billy", "put on some kenji abbott please", "will it rain in Lisbon this weekend"]


@pytest.fixture(scope="module")
def sharp(tiny_model_dir, tool_picker, tmp_path_factory):
    """(model dir, f32 GGUF): the tiny model with sharper logits (near-uniform ones make argmax near-ties that two
    engines' float sums may break differently), saved as a run's model/ and exported as f32."""
    import torch
    from transformers import AutoModelForCausalLM

    from schemabuild.train.gguf import serving_gguf

    run = tmp_path_factory.mktemp("sharp")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_safetensors=True)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    shutil.copytree(tiny_model_dir, run / "model")
    model.save_pretrained(run / "model")
    return run / "model", serving_gguf(tool_picker, run / "model", quant="f32", say=lambda _: None)


def llama_decoder(sharp, **kw):
    """A Decoder on the llama.cpp engine over the f32 GGUF (f32 KV cache, one thread)."""
    from transformers import AutoTokenizer

    from schemabuild.inference.decoder import Decoder
    from schemabuild.inference.llamacpp import LlamaCppForward
    from schemabuild.models import model_vocab_size

    model_dir, gguf = sharp
    contract = load_contract(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    engine = LlamaCppForward(gguf, model_vocab_size(model_dir, contract), rows=8, prefixes=4, threads=1, kv_f32=True)
    return Decoder(engine, tok, contract["stop_ids"], **kw)


def requests(tok, task, texts, max_tokens: int = 32):
    """Greedy requests under the task's schema, with their shared prefix length (as the server builds them)."""
    from schemabuild.inference.request import Request

    prefix = prompt_prefix(tok, task.instructions)
    out = []
    for t in texts:
        ids = encode_prompt(tok, task.instructions, t)
        out.append(Request(ids, grammar_schema(task.output), max_tokens=max_tokens,
                           prefix_len=shared_prefix_len(prefix, ids)))
    return out


def ids_of(results) -> list[list[int]]:
    return [r.token_ids for r in results]


# ---- the same answers ---------------------------------------------------------------------------------------------

def test_answers_equal_the_torch_engine_on_an_f32_gguf(sharp, tool_picker):
    import torch
    from transformers import AutoModelForCausalLM

    from schemabuild.inference.decoder import Decoder

    llama = llama_decoder(sharp)
    model = AutoModelForCausalLM.from_pretrained(sharp[0], use_safetensors=True, dtype=torch.float32).eval()
    torch_dec = Decoder(model, llama.tokenizer, llama.stop_ids)
    reqs = requests(llama.tokenizer, tool_picker, TEXTS)
    got, want = llama.generate(reqs), torch_dec.generate(reqs)
    assert ids_of(got) == ids_of(want)
    assert [r.finish_reason for r in got] == [r.finish_reason for r in want]
    for a, b in zip(got, want):
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-3)
    assert llama.context == 1024 and llama.vocab_size == model.config.vocab_size


def test_a_batch_answers_as_each_request_alone(sharp, tool_picker):
    llama = llama_decoder(sharp)
    reqs = requests(llama.tokenizer, tool_picker, TEXTS)
    together = llama.generate(reqs)
    alone = [llama.generate([r])[0] for r in reqs]
    assert ids_of(together) == ids_of(alone)
    assert [r.text for r in together] == [r.text for r in alone]
    assert llama.forward.in_use() == len(llama.prefixes) == 1  # the rows gave their sequences back


def test_speculation_changes_no_answer_and_rejected_drafts_leave_the_kv(sharp, tool_picker, monkeypatch):
    """Drafts scripted per row (the true continuation; wrong at the first token; wrong at the third), rows joining a
    running batch at several steps: every answer equals decoding without speculation."""
    plain = llama_decoder(sharp, speculate=False)
    spec = llama_decoder(sharp, speculate=True)
    tok = spec.tokenizer
    reqs = requests(tok, tool_picker, TEXTS)
    truth = {id(r): w.token_ids for r, w in zip(reqs, [plain.generate([r])[0] for r in reqs])}
    kinds = ["true", "first", "third", "true", "third", "first"]
    plan = {id(r): k for r, k in zip(reqs, kinds)}

    def scripted(seq, k):
        done = len(seq.ids)
        nxt = truth[id(seq.req)][done:done + 5][: seq.req.max_tokens - done - 1]
        wrong = [(t + 1) % len(tok) for t in nxt]
        return {"true": nxt, "first": wrong[:1] + nxt[1:], "third": nxt[:2] + wrong[2:3] + nxt[3:]}[plan[id(seq.req)]]

    monkeypatch.setattr(spec.lookup, "draft", scripted)
    joins = {0: [0, 1], 1: [2, 3], 3: [4, 5]}
    batch, rows, step = spec.new_batch(), {}, 0
    while step <= max(joins) or batch.rows:
        new, _ = spec.step(batch, [reqs[i] for i in joins.get(step, [])])
        rows.update(zip(joins.get(step, []), new))
        step += 1
    assert [spec.result(rows[i]).token_ids for i in range(len(reqs))] == [truth[id(r)] for r in reqs]
    assert 0 < spec.drafts["kept"] < spec.drafts["fed"]  # drafts kept, and drafts rejected (llama_memory_seq_rm)
    assert rows[0].passes < plain.generate([reqs[0]])[0].forward_passes


def test_prefix_reuse_changes_no_answer(sharp, tool_picker):
    reuse, fresh = llama_decoder(sharp, prefix_cache=4), llama_decoder(sharp, prefix_cache=0)
    reqs = requests(reuse.tokenizer, tool_picker, TEXTS[:4])
    assert all(r.prefix_len > 0 for r in reqs)
    got = reuse.generate(reqs[:2]) + [reuse.generate([r])[0] for r in reqs[2:]]
    assert ids_of(got) == ids_of(fresh.generate(reqs))
    assert len(reuse.prefixes) == 1 and len(fresh.prefixes) == 0  # one prefix decoded once, copied into every row


def test_a_dropped_prefix_gives_its_sequence_back(sharp, tool_picker):
    """A prefix cache of one, prompts with two different system prompts: the older prefix's KV sequence is freed."""
    from schemabuild.inference.request import Request

    llama = llama_decoder(sharp, prefix_cache=1)
    tok, schema = llama.tokenizer, grammar_schema(tool_picker.output)
    for system in ("You are Billy.", "You are Bob, a tool picker.", "You are Billy."):
        ids = encode_prompt(tok, system, TEXTS[0])
        llama.generate([Request(ids, schema, max_tokens=8, prefix_len=shared_prefix_len(prompt_prefix(tok, system),
                                                                                          ids))])
        assert llama.forward.in_use() == 1  # only the kept prefix holds a sequence


def test_chunked_prefill_changes_no_answer_and_gives_the_sequences_back(sharp, tool_picker):
    """Long prompts joining a running batch are fed 8 tokens a step into their own KV sequences, then move to the
    decoding rows: every answer equals the request decoded alone, and every row's sequence is freed at the end."""
    from schemabuild.inference.request import Request

    chunked = llama_decoder(sharp, prefill_chunk=8)
    tok, long = chunked.tokenizer, " ".join(TEXTS)
    reqs = [Request(encode_prompt(tok, "Reply.", "hi"), None, max_tokens=40, constrained=False)]
    reqs += requests(tok, tool_picker, [TEXTS[0], long, long[:80]], max_tokens=16)
    reqs += [Request(encode_prompt(tok, "Say which tool.", long), grammar_schema(tool_picker.output), max_tokens=16)]
    expected = ids_of([chunked.generate([r])[0] for r in reqs])  # alone: nothing else decodes, no chunks
    assert chunked.prefills["cut"] == 0
    joins = {0: [0], 1: [1, 2], 2: [3, 4]}
    batch, rows, step = chunked.new_batch(), {}, 0
    while step <= max(joins) or chunked.live(batch):
        new, _ = chunked.step(batch, [reqs[i] for i in joins.get(step, [])])
        rows.update(zip(joins.get(step, []), new))
        step += 1
    assert [chunked.result(rows[i]).token_ids for i in range(len(reqs))] == expected
    assert chunked.prefills["cut"] > 0, "no prompt was chunked: the first row stopped before the long ones joined"
    assert chunked.forward.in_use() == len(chunked.prefixes) == 1

# ---- serving ------------------------------------------------------------------------------------------------------

def test_the_server_answers_predict_and_chat_on_llama_cpp(tmp_path_factory):
    import httpx
    import openai

    from schemabuild.inference.llamacpp import LlamaCppForward

    quick = build_quick(tmp_path_factory.mktemp("quick"))
    with running_server([quick.task], [quick.model_dir], engine="llamacpp") as srv:
        assert isinstance(srv.served[0].decoder.forward, LlamaCppForward)
        assert (quick.model_dir.parent / "gguf" / "quick_pick.q8_0.gguf").is_file()
        r = httpx.post(srv.url + "/v1/tasks/quick_pick/predict", json={"input": "timer 5 minutes"}, timeout=120)
        assert r.status_code == 200, r.text
        quick.task.validate_output(r.json()["output"])
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        completion = client.chat.completions.create(
            model="quick_pick", messages=[{"role": "user", "content": "play some jazz"}])
        assert completion.choices[0].finish_reason == "stop"
        quick.task.validate_output(completion.choices[0].message.content)


def test_predict_on_llama_cpp_writes_the_gguf_once_and_prints_only_the_answer(tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    from schemabuild.cli import main

    quick = build_quick(tmp_path)
    monkeypatch.setenv("SCHEMABUILD_TASKS", str(quick.tasks_dir))
    args = ["predict", "quick_pick", "timer 5 minutes", "--run", str(quick.model_dir.parent), "--engine", "llamacpp"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output + first.stderr
    quick.task.validate_output(json.loads(first.stdout))
    gguf = quick.model_dir.parent / "gguf" / "quick_pick.q8_0.gguf"
    assert "GGUF written" in first.stderr and "engine: llama.cpp " in first.stderr and str(gguf) in first.stderr
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and again.stdout == first.stdout and "GGUF written" not in again.stderr  # reused


def test_adapters_sharing_a_base_are_one_clear_error_on_llama_cpp(tiny_model_dir, tool_picker, tmp_path, monkeypatch):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from schemabuild.contract import build_contract, save_contract
    from schemabuild.errors import ConfigError
    from schemabuild.serve.config import ServeConfig
    from schemabuild.serve.served import load_models
    from schemabuild.task import load_task
    from tests.conftest import TASKS

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    source = (TASKS / "tool_picker.py").read_text()
    (tasks / "tool_picker_b.py").write_text(source.replace('name="tool_picker"', 'name="tool_picker_b"'))
    monkeypatch.setenv("SCHEMABUILD_TASKS", str(tasks))
    second = load_task("tool_picker_b", tasks)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    dirs = []
    for task in (tool_picker, second):
        torch.manual_seed(0)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                               LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
        model.save_pretrained(tmp_path / task.name / "model")
        tok.save_pretrained(tmp_path / task.name / "model")
        save_contract(build_contract(task, tok, base_model=str(tiny_model_dir), adapter=True),
                      tmp_path / task.name / "model")
        dirs.append(tmp_path / task.name / "model")
    with pytest.raises(ConfigError, match="--engine llamacpp: serves one merged model per task") as err:
        load_models([tool_picker, second], ServeConfig(device="cpu", engine="llamacpp"), model_dirs=dirs)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="--mixed-adapters: not with --engine llamacpp"):
        ServeConfig(engine="llamacpp", mixed_adapters=True)
    assert not list(tmp_path.rglob("*.gguf"))  # refused before any file is written


def test_a_request_for_an_adapter_is_refused_on_llama_cpp(sharp, tool_picker):
    llama = llama_decoder(sharp)
    [req] = requests(llama.tokenizer, tool_picker, TEXTS[:1])
    req.adapter = "other"
    with pytest.raises(ValueError, match="unknown adapter 'other'"):
        llama.generate([req])


def test_without_llama_cpp_python_the_error_says_how_to_install_it(tiny_model_dir, tool_picker, monkeypatch):
    import sys

    from schemabuild.errors import ConfigError
    from schemabuild.models import load_llamacpp

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if not installed
    with pytest.raises(ConfigError, match="needs llama-cpp-python: CMAKE_ARGS=.*pip install llama-cpp-python") as err:
        load_llamacpp(tool_picker, tiny_model_dir)
    assert "\n" not in str(err.value) and "-DGGML_AMX_TILE=OFF" in str(err.value)


def test_a_gguf_with_another_vocabulary_is_one_clear_error(sharp):
    from schemabuild.errors import ConfigError
    from schemabuild.inference.llamacpp import LlamaCppForward

    with pytest.raises(ConfigError, match="tokens, but the model's vocabulary has 7"):
        LlamaCppForward(sharp[1], 7, threads=1)
