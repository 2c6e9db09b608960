"""GGUF / Ollama export: the file written by `schemabuild export --format gguf|ollama`, read back by transformers' GGUF
loader (same weights, same greedy answers) and run in llama.cpp (llama-cpp-python, skipped only when it is not
installed) under the task's JSON schema.

Rows are the task's own examples and rows generated from them (tests/conftest.py), never the evals/ sets.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import offline_rows

pytestmark = pytest.mark.usefixtures("one_thread")


def run_with_model(model_dir: Path, root: Path, run_id: str = "exported") -> Path:
    """A tool_picker run folder whose model/ is a copy of `model_dir`."""
    from schemabuild.runs import new_run

    run_dir = new_run("tool_picker", root, run_id)
    shutil.copytree(model_dir, run_dir / "model")
    return run_dir


def cli(*args):
    from schemabuild.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def gguf_model(path: Path):
    """The GGUF's weights as a transformers model (dequantized to fp32 by transformers' own loader)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def read_gguf(path: Path) -> tuple[dict, dict]:
    """({metadata key: value}, {tensor name: GGML type name}) of a GGUF file."""
    import gguf

    reader = gguf.GGUFReader(path)
    meta = {}
    for key, field in reader.fields.items():
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"):
            meta[key] = field.contents()
        elif not key.startswith("GGUF."):
            meta[key] = field.contents()
    return meta, {t.name: t.tensor_type.name for t in reader.tensors}


def greedy_texts(task, model, tokenizer, contract, texts: list[str], max_tokens: int = 48) -> list[str]:
    """Our constrained greedy decoder's output text for each input."""
    from schemabuild.predictor import Predictor

    predictor = Predictor(task, model, tokenizer, contract, device="cpu")
    return [p.text for p in predictor.predict_many(texts, batch_size=8, progress=False, max_tokens=max_tokens)]


def merged(task, model_dir: Path):
    from schemabuild.models import load_model

    return load_model(task, model_dir, device="cpu", merge=True)


# ---- the file ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_exports(tmp_path_factory, tiny_model_dir):
    """The tiny model's run, exported by the CLI as f32, f16 and q8_0 (the default)."""
    run_dir = run_with_model(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "runs")
    files = {}
    for quant in ("f32", "f16", None):
        args = ["export", "tool_picker", "--format", "gguf", "--run", run_dir] + (["--quant", quant] if quant else [])
        result = cli(*args)
        assert result.exit_code == 0, result.output
        files[quant or "q8_0"] = run_dir / "export" / "gguf" / f"tool_picker-{quant or 'q8_0'}.gguf"
    return run_dir, files


def test_gguf_metadata_is_what_llama_cpp_reads(tiny_exports, tool_picker):
    from transformers import AutoTokenizer

    run_dir, files = tiny_exports
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    contract = json.loads((run_dir / "model" / "contract.json").read_text())
    meta, tensors = read_gguf(files["q8_0"])
    assert meta["general.architecture"] == "llama" and meta["llama.block_count"] == 4
    assert meta["llama.embedding_length"] == 128 and meta["llama.attention.head_count_kv"] == 2
    assert meta["llama.rope.dimension_count"] == 32 and meta["general.file_type"] == 7  # MOSTLY_Q8_0
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == len(tokenizer) and tokens[contract["stop_ids"][0]] == "<|im_end|>"
    assert meta["tokenizer.ggml.eos_token_id"] == contract["stop_ids"][0] == meta["tokenizer.ggml.eot_token_id"]
    # the student prompt is one added (not special) token in the tiny tokenizer: llama.cpp must match it whole
    prompt_id = tokenizer.convert_tokens_to_ids(contract["system_prompt"])
    assert tokens[prompt_id] == contract["system_prompt"] and meta["tokenizer.ggml.token_type"][prompt_id] == 4
    assert meta["tokenizer.ggml.token_type"][contract["stop_ids"][0]] == 3  # CONTROL
    assert meta["tokenizer.ggml.add_bos_token"] is False
    # plain Jinja (what llama.cpp and Ollama's importers have) renders the GGUF's template as transformers renders ours
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    msgs = [{"role": "system", "content": contract["system_prompt"]}, {"role": "user", "content": "hi billy"},
            {"role": "assistant", "content": '{"tool":"no_tool","query":null}'}]
    plain = ImmutableSandboxedEnvironment().from_string(meta["tokenizer.chat_template"])
    assert plain.render(messages=msgs, add_generation_prompt=False) == tokenizer.apply_chat_template(msgs, tokenize=False)
    assert len(meta["tokenizer.ggml.merges"]) > 100 and all(m.count(" ") == 1 for m in meta["tokenizer.ggml.merges"])
    # 2-D weights in q8_0, norms in f32; the tied output projection is left to the embedding
    assert tensors["blk.0.attn_q.weight"] == "Q8_0" and tensors["token_embd.weight"] == "Q8_0"
    assert tensors["blk.0.attn_norm.weight"] == "F32" and "output.weight" not in tensors
    sizes = {q: f.stat().st_size for q, f in files.items()}
    assert sizes["q8_0"] < 0.6 * sizes["f16"] < 0.6 * sizes["f32"], sizes


def test_f32_gguf_reads_back_with_identical_weights_and_answers(tiny_exports, tool_picker):
    import torch

    run_dir, files = tiny_exports
    model, tokenizer, contract = merged(tool_picker, run_dir / "model")
    back = gguf_model(files["f32"])
    ours, theirs = model.state_dict(), back.state_dict()
    for name, tensor in ours.items():  # the q/k permutation undone by transformers gives back the very same numbers
        assert torch.equal(tensor, theirs[name]), name
    texts = [ex.input for ex in tool_picker.examples[:12]]
    assert greedy_texts(tool_picker, back, tokenizer, contract, texts) == \
        greedy_texts(tool_picker, model, tokenizer, contract, texts)


def test_f16_and_q8_0_stay_close_to_the_weights(tiny_exports, tool_picker):
    run_dir, files = tiny_exports
    model, _, _ = merged(tool_picker, run_dir / "model")
    ours = model.state_dict()
    for quant, bound in (("f16", 1e-3), ("q8_0", 2e-2)):
        theirs = gguf_model(files[quant]).state_dict()
        worst = max(((ours[n] - theirs[n]).abs().max() / ours[n].abs().max()).item() for n in ours)
        assert 0 < worst < bound, (quant, worst)


def test_ollama_folder_has_the_gguf_and_a_modelfile_that_renders_our_prompt(tiny_model_dir, tool_picker, tmp_path):
    from transformers import AutoTokenizer

    from schemabuild.contract import grammar_schema, render_prompt

    run_dir = run_with_model(tiny_model_dir, tmp_path / "runs")
    out = tmp_path / "ollama"
    result = cli("export", "tool_picker", "--format", "ollama", "--quant", "f16", "--run", run_dir, "--out", out)
    assert result.exit_code == 0, result.output
    assert (out / "tool_picker-f16.gguf").is_file()
    modelfile = (out / "Modelfile").read_text()
    contract = json.loads((run_dir / "model" / "contract.json").read_text())
    assert "FROM ./tool_picker-f16.gguf\n" in modelfile
    assert f'SYSTEM """{contract["system_prompt"]}"""' in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "PARAMETER temperature 0\n" in modelfile
    assert "PARAMETER repeat_penalty 1\n" in modelfile
    template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    # what Ollama renders for [system, user] is byte for byte the prompt the model was trained on
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    rendered = template.replace("{{ .System }}", contract["system_prompt"]).replace("{{ .Prompt }}", "hi billy")
    assert rendered == render_prompt(tokenizer, contract["system_prompt"], "hi billy") + "{{ .Response }}<|im_end|>"
    assert f"cd {out.resolve()} && ollama create tool_picker -f Modelfile" in result.output
    # the printed commands, read back the way a shell reads them
    lines = [shlex.split(line) for line in result.output.splitlines() if line.startswith("  ")]
    ollama = next(words for words in lines if "11434" in " ".join(words))
    body = json.loads(ollama[ollama.index("-d") + 1])
    assert body["format"] == grammar_schema(tool_picker.output) and body["model"] == "tool_picker"
    server = next(words for words in lines if words[0] == "llama-server")
    assert server[server.index("-m") + 1] == str((out / "tool_picker-f16.gguf").resolve())
    assert json.loads(server[server.index("--json-schema") + 1]) == grammar_schema(tool_picker.output)
    chat = next(words for words in lines if "8080" in " ".join(words))
    messages = json.loads(chat[chat.index("-d") + 1])["messages"]
    assert messages[0] == {"role": "system", "content": contract["system_prompt"]}


def test_unsupported_architecture_is_one_line(tool_picker, tmp_path):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from schemabuild.contract import build_contract, save_contract
    from schemabuild.train.tiny import train_tokenizer, task_texts

    tokenizer = train_tokenizer(task_texts(tool_picker), 512)
    model_dir = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    save_contract(build_contract(tool_picker, AutoTokenizer.from_pretrained(model_dir), base_model="gpt2-test",
                                 adapter=False), model_dir)
    run_dir = run_with_model(model_dir, tmp_path / "runs")
    result = cli("export", "tool_picker", "--format", "gguf", "--run", run_dir)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "llama and qwen2" in lines[0] and "'gpt2'" in lines[0], result.output
    assert not list((run_dir / "export").rglob("*.gguf*"))


def test_qwen2_exports_with_biases_and_reads_back_exactly(tool_picker, tmp_path):
    """The hub rung of the ladder (Qwen2.5) without the hub: a tiny Qwen2 with Qwen2's split regex."""
    import torch
    from tokenizers import Regex, pre_tokenizers
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    from schemabuild.contract import build_contract, save_contract
    from schemabuild.train.tiny import train_tokenizer, task_texts

    tokenizer = train_tokenizer(task_texts(tool_picker), 512)
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer) + 5, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():  # random biases, so a dropped or misplaced bias cannot go unseen
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_()
    model_dir = tmp_path / "qwen2"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    save_contract(build_contract(tool_picker, AutoTokenizer.from_pretrained(model_dir), base_model="qwen2-test",
                                 adapter=False), model_dir)
    run_dir = run_with_model(model_dir, tmp_path / "runs")
    result = cli("export", "tool_picker", "--format", "gguf", "--quant", "f32", "--run", run_dir)
    assert result.exit_code == 0, result.output
    path = run_dir / "export" / "gguf" / "tool_picker-f32.gguf"
    meta, tensors = read_gguf(path)
    assert meta["general.architecture"] == "qwen2" and meta["tokenizer.ggml.pre"] == "qwen2"
    assert "blk.1.attn_k.bias" in tensors and "output.weight" in tensors
    assert meta["tokenizer.ggml.tokens"][-1] == f"[PAD{config.vocab_size - 1}]"  # embedding rows past the vocabulary
    back = gguf_model(path)
    ids = torch.tensor([[1, 5, 9, 200, 300, 2]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, back(ids).logits)


# ---- a trained model: transformers' loader and llama.cpp ---------------------------------------------------------

def generated_texts(task, run_dir: Path) -> list[str]:
    """Inputs to answer: the run's validation rows plus fresh rewordings of the task's examples (seed 1)."""
    from schemabuild.contract import split_chat_row
    from schemabuild.runs import read_jsonl

    texts = [split_chat_row(row)[1] for row in read_jsonl(run_dir / "data" / "val.jsonl")]
    texts += [split_chat_row(row)[1] for row in offline_rows(task, copies=2, seed=1)]
    return list(dict.fromkeys(texts))


@pytest.fixture(scope="module")
def trained_exports(trained_run, tmp_path_factory):
    """The trained tiny run exported as f32 and q8_0 (outside the shared run folder)."""
    out = tmp_path_factory.mktemp("trained-gguf")
    files = {}
    for quant in ("f32", "q8_0"):
        result = cli("export", "tool_picker", "--format", "gguf", "--quant", quant, "--run", trained_run, "--out", out)
        assert result.exit_code == 0, result.output
        files[quant] = out / f"tool_picker-{quant}.gguf"
    return files


@pytest.mark.slow
def test_trained_gguf_answers_like_the_merged_model(trained_run, trained_exports, tool_picker):
    """f32: the very same greedy answers; q8_0: the agreement is printed (and must stay high)."""
    model, tokenizer, contract = merged(tool_picker, trained_run / "model")
    texts = generated_texts(tool_picker, trained_run)
    ours = greedy_texts(tool_picker, model, tokenizer, contract, texts)
    assert greedy_texts(tool_picker, gguf_model(trained_exports["f32"]), tokenizer, contract, texts) == ours
    q8 = greedy_texts(tool_picker, gguf_model(trained_exports["q8_0"]), tokenizer, contract, texts)
    agree = sum(a == b for a, b in zip(q8, ours)) / len(texts)
    print(f"q8_0 GGUF (transformers' loader) vs merged model: {agree:.3f} identical answers on {len(texts)} inputs")
    assert agree >= 0.9


@pytest.mark.slow
def test_llama_cpp_answers_under_the_schema_like_our_predictor(trained_run, trained_exports, tool_picker):
    llama_cpp = pytest.importorskip("llama_cpp")
    from pydantic import ValidationError

    from schemabuild.contract import encode_prompt, grammar_schema, render_prompt
    from schemabuild.predictor import Predictor

    predictor = Predictor.from_model_dir(tool_picker, trained_run / "model", device="cpu")
    system = predictor.contract["system_prompt"]
    llm = llama_cpp.Llama(model_path=str(trained_exports["q8_0"]), n_ctx=512, n_threads=1, verbose=False, seed=0)
    texts = generated_texts(tool_picker, trained_run)
    agree, invalid = 0, []
    for text in texts:
        # llama.cpp reads the prompt as the very tokens training saw (no BOS added, specials and the added token whole)
        prompt = render_prompt(predictor.tokenizer, system, text)
        assert llm.tokenize(prompt.encode(), add_bos=True, special=True) == \
            encode_prompt(predictor.tokenizer, system, text), text
        reply = llm.create_chat_completion(
            messages=[{"role": "system", "content": system}, {"role": "user", "content": text}],
            response_format={"type": "json_object", "schema": grammar_schema(tool_picker.output)},
            temperature=0.0, max_tokens=64)
        answer = reply["choices"][0]["message"]["content"]
        try:
            theirs = tool_picker.output.model_validate_json(answer)
        except ValidationError:
            invalid.append((text, answer))
            continue
        agree += theirs == predictor.predict(text, max_tokens=64).output
    llm.close()  # now, not at interpreter exit (where llama-cpp-python's finalizer can fail noisily)
    print(f"llama.cpp (q8_0) vs our predictor: {agree}/{len(texts)} identical outputs")
    assert not invalid, invalid[:3]
    assert agree >= 0.95 * len(texts)
