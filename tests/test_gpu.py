"""The CUDA path, checked against the CPU path (skipped without CUDA; run them with `bench/gpu_check.sh`).

- greedy answers on CUDA equal the CPU's: fp32 exactly, bf16 on inputs the trained tiny model knows well;
- a batch equals its rows one by one on CUDA;
- 30 LoRA steps on the real 135M base in bf16: the loss falls, and bf16 is read off the weights the trainer holds
  (not from the flags train_run writes).
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import write_offline_run

pytestmark = pytest.mark.gpu

NEW_TEXTS = ["billy play some Daft Punk", "weather forecast for Tokyo", "gif of a dancing cat", "thanks billy",
             "set a timer for 10 minutes", "post an image of a red panda"]


def known_texts(task) -> list[str]:
    """Inputs the trained tiny model was trained on: wide logit margins, so bf16 must not flip them."""
    return [ex.input for ex in task.examples[:8]]


def predictor(task, model_dir, device, precision):
    from schemabuild.predictor import Predictor

    return Predictor.from_model_dir(task, model_dir, device=device, precision=precision)


def greedy(pred, texts, max_tokens=48) -> list[str]:
    return [r.text for r in pred.generate_raw([pred.request(t, max_tokens=max_tokens) for t in texts])]


def one_by_one(pred, texts, max_tokens=48) -> list[str]:
    return [pred.generate_raw([pred.request(t, max_tokens=max_tokens)])[0].text for t in texts]


def test_cuda_greedy_matches_cpu(trained_run, tool_picker):
    import torch

    from schemabuild.precision import weight_dtypes

    model_dir = trained_run / "model"
    texts = known_texts(tool_picker) + NEW_TEXTS
    cpu = one_by_one(predictor(tool_picker, model_dir, "cpu", "fp32"), texts)
    cuda32 = predictor(tool_picker, model_dir, "cuda", "fp32")
    assert next(cuda32.decoder.model.parameters()).device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 matmuls as the CPU does them
    assert one_by_one(cuda32, texts) == cpu
    bf16 = predictor(tool_picker, model_dir, "cuda", "auto")  # cuda's default precision
    assert set(weight_dtypes(bf16.decoder.model)) == {"bfloat16"}
    n = len(known_texts(tool_picker))
    assert one_by_one(bf16, texts[:n]) == cpu[:n]


def test_cuda_batched_equals_one_by_one(trained_run, tool_picker):
    model_dir = trained_run / "model"
    texts = known_texts(tool_picker) + NEW_TEXTS
    fp32 = predictor(tool_picker, model_dir, "cuda", "fp32")
    assert greedy(fp32, texts) == one_by_one(fp32, texts)
    bf16 = predictor(tool_picker, model_dir, "cuda", "bf16")
    known = known_texts(tool_picker)
    assert greedy(bf16, known) == one_by_one(bf16, known)
    sampled = bf16.generate_raw([bf16.request(NEW_TEXTS[0], max_tokens=24, temperature=1.0, seed=7)] * 2)
    assert sampled[0].text == sampled[1].text  # a seeded sample repeats on CUDA


@pytest.mark.slow
def test_bf16_lora_steps_on_the_135m_base_lower_the_loss(tool_picker, tmp_path, monkeypatch):
    import torch
    from transformers import TrainerCallback

    from schemabuild.bases import registry_base
    from schemabuild.runs import Run
    from schemabuild.train import TrainConfig, train_run
    from schemabuild.train import fit

    registry_base("smollm2-135m")  # fails loudly (not a skip) when the base cannot be had on this machine
    seen: dict[str, set] = {"frozen": set(), "trained": set(), "device": set()}

    class Observe(TrainerCallback):
        """Reads the dtypes off the model the trainer steps, every step."""

        def on_step_end(self, args, state, control, model=None, **kwargs):
            for _, p in model.named_parameters():
                seen["trained" if p.requires_grad else "frozen"].add(p.dtype)
                seen["device"].add(p.device.type)

    real = fit.make_trainer

    def make_trainer(model, tokenizer, args, rows, peft_config=None, callbacks=()):
        return real(model, tokenizer, args, rows, peft_config, [*callbacks, Observe()])

    monkeypatch.setattr(fit, "make_trainer", make_trainer)
    run_dir = write_offline_run(tool_picker, tmp_path / "runs", copies=5)
    train_run(tool_picker, run_dir, TrainConfig(base="smollm2-135m", device="cuda", max_steps=30, batch_size=8,
                                                logging_steps=1, save_steps=10_000, lr=1e-3))
    log = Run(run_dir).train_log.read_text().splitlines()
    losses = [e["loss"] for e in map(json.loads, log) if "loss" in e]
    assert len(losses) >= 25
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5  # the loss falls
    assert seen["frozen"] == {torch.bfloat16}  # the base weights the trainer holds are bf16
    assert seen["device"] == {"cuda"}
    assert seen["trained"]  # LoRA weights were stepped (their dtype is PEFT's choice: fp32 or bf16)
