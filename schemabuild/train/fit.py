"""Fine-tune: resolve the base → tokenize with the contract → TRL SFTTrainer (+ PEFT LoRA) → save `model/`.

    schemabuild train tool_picker                       # synth if needed, train, eval, print where it all went
    schemabuild train tool_picker --base tiny --epochs 4
    schemabuild train tool_picker --resume              # continue the latest run from its last checkpoint

What a run gets under `runs/<task>/<run-id>/`:
    train_config.json   the resolved settings (lr, epochs, base, full vs LoRA, device, precision, ...)
    checkpoints/        Trainer checkpoints (every --save-steps), what `--resume` continues from
    tiny_base/          the embedded tiny base when one was built (so a resume reuses the same tokenizer)
    model/              the adapter (real bases) or full weights (tiny), tokenizer, contract.json,
                        train_log.jsonl (one line per logging step), train_summary.json

Base models: a hub id (e.g. Qwen/Qwen2.5-0.5B-Instruct) or local path gets LoRA on all linear layers; the embedded
tiny model (random weights, `--base tiny`, or `auto` when no hub model can be had) is trained fully.

Prompts and targets come from `schemabuild.contract.encode_example` only: the loss is on the canonical JSON and
the end-of-turn token (so the model learns to stop), never on the prompt.

More than one device (the Trainer picks the launcher's settings up from the environment):
    torchrun --nproc_per_node 2 -m schemabuild.train tool_picker --config train.json   # DDP (gloo on CPU, nccl on GPU)
    accelerate launch --num_processes 2 -m schemabuild.train tool_picker --run <dir>
    accelerate launch --config_file fsdp.yaml -m schemabuild.train ...          # FSDP / DeepSpeed via accelerate config
Under a launcher, synthesize first (`schemabuild synth <task> --n N`, the same --n as `train`): every process then
trains the task's latest run. torchrun's own parser takes `--run` and `--n` for abbreviations of its flags: put
them in a `--config` file ({"run": "<dir>", "n": 1000}) instead.
`--batch-size` is per process; the effective batch is batch_size × grad_accum × processes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from schemabuild.config import resolved
from schemabuild.contract import build_contract, render_prompt, save_contract
from schemabuild import precision as engine_precision
from schemabuild.errors import ConfigError, TaskError
from schemabuild.runs import Run, read_json, write_json
from schemabuild.train import answer_loss
from schemabuild.train.base import Base, build_tiny_base, resolve_base
from schemabuild.train.data import MIN_ROWS, load_split
from schemabuild.train.length import Validator, curve_callback, plan_length
from schemabuild.train.settings import LORA_DEFAULTS, TINY_DEFAULTS, TrainConfig



def _progress_callback(log_path: Path, is_main: bool):
    """A TrainerCallback: one tqdm bar, a plain loss line per logging step, and `train_log.jsonl`."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            if is_main:
                self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step",
                                dynamic_ncols=True, file=sys.stderr)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not is_main or not logs:
                return
            entry = {"step": state.global_step, "epoch": round(state.epoch or 0, 3), **logs}
            with log_path.open("a") as f:
                f.write(json.dumps(entry) + "\n")
            if "loss" in logs:
                line = (f"step {state.global_step}/{state.max_steps}  epoch {entry['epoch']:.2f}  loss {logs['loss']:.4f}"
                        f"  lr {logs.get('learning_rate', 0):.2e}")
                (self.bar.write if self.bar is not None else print)(line)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()

    return Progress()


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete Trainer checkpoint of a run (what --resume continues from), or None."""
    ckpts = sorted(Run(run_dir).checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    ckpts = [c for c in ckpts if (c / "trainer_state.json").is_file()]
    return ckpts[-1] if ckpts else None


def _device(cfg: TrainConfig) -> str:
    import torch

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _quiet_library_progress() -> None:
    """One progress bar (ours) for training: no per-step bars from datasets/transformers for milliseconds of work."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()


@dataclasses.dataclass
class Plan:
    """What one training resolves to before any weights load: the base and the hyperparameters for it."""

    base: Base
    base_spec: str
    """The --base the user gave (or the resumed run's)."""
    load_from: str
    """The folder or hub id the tokenizer and weights load from."""
    full: bool
    """Full training (the tiny base) instead of LoRA."""
    lr: float
    epochs: float
    batch_size: int
    lora_r: int | None = None
    lora_alpha: int | None = None
    resume_from: Path | None = None


def train_precision(cfg: TrainConfig, device: str) -> tuple[str, str]:
    """("bf16" | "fp32", why): bf16 weights on a CUDA GPU that has it; bf16 autocast on a CPU with native bf16
    (avx512_bf16 / amx_bf16: a bf16 matmul ran 2x fp32 on such a machine); fp32 elsewhere (on AVX2 alone bf16 is
    emulated, slower than fp32)."""
    import torch

    if device == "cuda":
        ok = torch.cuda.is_bf16_supported()
        if cfg.precision == "bf16" and not ok:
            raise ConfigError("--precision bf16: this GPU has no bf16")
        chosen = "fp32" if cfg.precision == "fp32" or not ok else "bf16"
        return chosen, "GPU" if chosen == "bf16" else ("--precision fp32" if ok else "this GPU has no bf16")
    flags = engine_precision.cpu_flags()
    native = sorted(flags & set(engine_precision.BF16_FLAGS))
    if cfg.precision != "auto":
        return cfg.precision, f"--precision {cfg.precision}" + ("" if native or cfg.precision == "fp32" else ", emulated on this CPU")
    if native:
        return "bf16", f"CPU autocast: {', '.join(native)}"
    best = next((f for f in ("avx512f", "avx2", "neon", "asimd") if f in flags), "unknown")
    return "fp32", f"this CPU has no bf16: {best}"


def train_run(task, run_dir: Path, cfg: TrainConfig, validator: Validator | None = None) -> Path:
    """Fine-tune on `run_dir/data/` and write `run_dir/model/`; returns the model directory.

    `validator` (the validation rows and their scorer, see `length.Validator`) lets the default length be measured;
    without it, or with --epochs, the length is fixed."""
    import torch
    from transformers import set_seed

    _quiet_library_progress()
    run = Run(run_dir)
    set_seed(cfg.seed)
    device = _device(cfg)
    main = is_main()
    _check_qlora(cfg, device)

    # setup: resume state, base, tokenizer, data, model
    plan = plan_run(task, run, cfg, main)
    tokenizer = _load_tokenizer(task, plan, cfg)
    train_rows, train_stats = load_split(task, tokenizer, run.dir, "train", cfg.max_length)
    val_rows, val_stats = load_split(task, tokenizer, run.dir, "val", cfg.max_length)
    _check_rows(task, run, cfg, train_rows, train_stats, main)
    max_length = cfg.max_length or max(train_stats["longest"], val_stats["longest"])
    precision, why = train_precision(cfg, device)
    bf16 = precision == "bf16"
    length = plan_length(cfg, "tiny" if plan.full else "lora", plan.epochs, len(train_rows),
                         plan.batch_size * cfg.grad_accum * world_size(), validator, device)
    plan.epochs = length.epochs
    if main:
        print(f"precision: {precision} ({why})")
        if device == "cpu":
            print(f"cpu: {torch.get_num_threads()} threads, {engine_precision.wait_policy_line()}")
        print(f"length: {length.why}")
    model = _load_weights(plan, cfg, bf16 and device == "cuda")  # on CPU: fp32 weights, bf16 autocast
    peft_config = None if plan.full else lora_config(model, cfg, plan.lora_r, plan.lora_alpha)
    args = sft_config(cfg, run.checkpoints, lr=plan.lr, epochs=plan.epochs, batch_size=plan.batch_size,
                      max_length=max_length, device=device, bf16=bf16)
    if main:
        _prepare_folders(run, plan)
        write_json(run.train_config_file, {
            **resolved(cfg), "lr": plan.lr, "epochs": plan.epochs, "lora_r": plan.lora_r, "lora_alpha": plan.lora_alpha,
            "batch_size": plan.batch_size, "max_length": max_length, "base_arg": plan.base_spec,
            "base": dataclasses.asdict(plan.base), "base_kind": plan.base.kind, "base_model": plan.base.name,
            "full_training": plan.full, "adapter": not plan.full, "device": device, "precision": precision,
            "length": dataclasses.asdict(length),
            "gradient_checkpointing": device == "cuda" and cfg.gradient_checkpointing, "world_size": world_size(),
            "effective_batch": plan.batch_size * cfg.grad_accum * world_size(),
            "train_rows": len(train_rows), "val_rows": len(val_rows), "dropped_long": train_stats["dropped"],
        })
    callbacks = [_progress_callback(run.train_log, main)]
    curve = None
    if length.measured:
        curve = curve_callback(task, tokenizer, _contract(task, tokenizer, plan), validator, length, device,
                               run.train_log, main)
        callbacks.append(curve)
    trainer = make_trainer(model, tokenizer, args, train_rows, peft_config, callbacks)

    # run
    start_step = read_json(plan.resume_from / "trainer_state.json")["global_step"] if plan.resume_from else 0
    if plan.resume_from is not None and main:
        print(f"resuming from {plan.resume_from.name} (step {start_step})")
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(plan.resume_from) if plan.resume_from else None)
    seconds = time.perf_counter() - start
    measured = curve.summary() if curve is not None else {"curve": [], "best_step": None, "stopped": None}
    if curve is not None and curve.restore_best(trainer.model) and main:
        print(f"kept the best weights: step {measured['best_step']} (validation {measured['best_val_score']:.3f})")
    val_loss = _val_loss(trainer, val_rows)

    # save
    if trainer.is_world_process_zero():
        _save(task, run, trainer, tokenizer, plan, {
            "global_step": trainer.state.global_step, "epochs": plan.epochs, "train_loss": result.training_loss,
            "val_loss": val_loss, "seconds": round(seconds, 2), "train_rows": len(train_rows),
            "resumed_from": plan.resume_from.name if plan.resume_from else None,
            "base_model": "tiny" if plan.full else plan.base.name, "full_training": plan.full, "device": device,
            "precision": precision, "length": "measured" if length.measured else "fixed", **measured,
            "seconds_per_step": round(seconds / max(1, trainer.state.global_step - start_step), 3)}, main)
    if world_size() > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return run.model


def _check_qlora(cfg: TrainConfig, device: str) -> None:
    if not cfg.qlora:
        return
    if device != "cuda":
        raise ConfigError("--qlora: needs a CUDA device (4-bit bitsandbytes kernels); drop --qlora on CPU")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError("--qlora: needs bitsandbytes (`pip install bitsandbytes`)") from None


def plan_run(task, run: Run, cfg: TrainConfig, main: bool = True) -> Plan:
    """The base (the resumed run's when resuming), where it loads from, and the hyperparameters for its kind."""
    resume_from, saved = None, {}
    if cfg.resume:
        resume_from = last_checkpoint(run.dir)
        if resume_from is None:
            raise ConfigError(f"--resume: {run.dir} has no checkpoint to continue from (start a fresh run without --resume)")
        saved = run.train_config() or {}
    base_spec = saved.get("base_arg", cfg.base)
    base = Base(**saved["base"]) if "base" in saved else resolve_base(base_spec)
    full = base.kind == "tiny"
    defaults = TINY_DEFAULTS if full else LORA_DEFAULTS
    plan = Plan(base, base_spec, base.where, full, lr=cfg.lr if cfg.lr is not None else defaults["lr"],
                epochs=cfg.epochs if cfg.epochs is not None else defaults["epochs"],
                batch_size=cfg.batch_size or defaults["batch_size"], resume_from=resume_from)
    if full:
        if main:
            print(f"base: the embedded tiny model (built on the spot{' because no hub model can be had' if cfg.base == 'auto' else ''}; trained fully, no LoRA)")
            plan.load_from = str(build_tiny_base(task, run.dir, cfg.seed))
        else:  # the other ranks of a launcher wait for rank 0's build (TINY is written last)
            plan.load_from = str(_wait_for(run.tiny_base / "TINY").parent)
    else:
        plan.lora_r = cfg.lora_r or LORA_DEFAULTS["lora_r"]
        plan.lora_alpha = cfg.lora_alpha or 2 * plan.lora_r
        if main:
            print(f"base: {base.name} (LoRA r={plan.lora_r}, alpha {plan.lora_alpha} on {cfg.lora_targets})")
    return plan


def _load_tokenizer(task, plan: Plan, cfg: TrainConfig):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(plan.load_from, trust_remote_code=cfg.trust_remote_code)
    except OSError as exc:
        raise ConfigError(f"--base {plan.base_spec}: cannot load a tokenizer ({str(exc).splitlines()[0]})") from None
    render_prompt(tokenizer, task.instructions, "probe")  # ContractError when there is no chat template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _check_rows(task, run: Run, cfg: TrainConfig, rows: list, stats: dict, main: bool) -> None:
    """Warn about rows dropped for --max-length; refuse fewer than MIN_ROWS usable rows."""
    if stats["dropped"] and main:
        print(f"warning: {stats['dropped']} of {stats['rows']} training examples are longer than "
              f"--max-length {cfg.max_length} tokens (longest {stats['longest']}) and were dropped; "
              f"raise --max-length to keep them", file=sys.stderr)
    if len(rows) < MIN_ROWS:
        why = f" after dropping {stats['dropped']} longer than --max-length {cfg.max_length}" if stats["dropped"] else ""
        raise TaskError(f"{run.train_file}: {len(rows)} usable training rows{why}; "
                        f"need at least {MIN_ROWS} (synthesize more with `schemabuild synth {task.name} --n 500`)")


def _load_weights(plan: Plan, cfg: TrainConfig, bf16: bool):
    """The base's weights to train (safetensors only; 4-bit with --qlora)."""
    import torch
    from transformers import AutoModelForCausalLM

    model_kw = dict(trust_remote_code=cfg.trust_remote_code, use_safetensors=True,
                    dtype=torch.bfloat16 if bf16 else torch.float32)
    if cfg.qlora:
        from transformers import BitsAndBytesConfig

        model_kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True)
    try:
        return AutoModelForCausalLM.from_pretrained(plan.load_from, **model_kw)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--base {plan.base_spec}: cannot load safetensors weights ({str(exc).splitlines()[0]})") from None


def _prepare_folders(run: Run, plan: Plan) -> None:
    """A fresh start (or a refinement round) leaves no stale checkpoints, logs or weights behind."""
    if plan.resume_from is None:
        shutil.rmtree(run.checkpoints, ignore_errors=True)
        shutil.rmtree(run.model, ignore_errors=True)
    run.model.mkdir(parents=True, exist_ok=True)


def _val_loss(trainer, val_rows: list) -> float | None:
    if not val_rows:
        return None
    from datasets import Dataset

    return trainer.evaluate(Dataset.from_list(val_rows))["eval_loss"]


def _save(task, run: Run, trainer, tokenizer, plan: Plan, summary: dict, main: bool) -> None:
    """model/: weights or adapter (safetensors), tokenizer, contract.json, train_summary.json."""
    trainer.save_model(str(run.model))
    (run.model / "training_args.bin").unlink(missing_ok=True)  # a pickle: model/ holds safetensors and JSON only
    tokenizer.save_pretrained(str(run.model))
    save_contract(_contract(task, tokenizer, plan), run.model)
    write_json(run.train_summary, summary)
    if main:
        vl = f", val loss {summary['val_loss']:.4f}" if summary["val_loss"] is not None else ""
        print(f"trained {summary['global_step']} steps in {summary['seconds']:.0f}s: train loss "
              f"{summary['train_loss']:.4f}{vl} → {run.model}")


def _contract(task, tokenizer, plan: Plan) -> dict:
    """The contract the trained model is saved with (and measured through while it trains)."""
    full = plan.full
    return build_contract(task, tokenizer, base_model="tiny" if full else plan.base.name, adapter=not full,
                          lora_r=None if full else plan.lora_r, base_path=None if full else plan.base.where,
                          base_source=plan.base.source, base_sha256=plan.base.sha256,
                          training="full" if full else "lora")


def lora_config(model, cfg: TrainConfig, r: int, alpha: int):
    """The PEFT LoraConfig: `--lora-targets` on the top `--lora-layers` layers (0 = all, the default)."""
    from peft import LoraConfig

    targets = cfg.lora_targets if cfg.lora_targets == "all-linear" else [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
    n = getattr(model.config, "num_hidden_layers", None)
    count = cfg.lora_layers
    if count is None:  # the default: the top fraction of the layers when the config says how many there are
        count = math.ceil(n * LORA_DEFAULTS["layers_fraction"]) if n and LORA_DEFAULTS["layers_fraction"] < 1 else 0
    layers = None
    if count:
        if not n:
            raise ConfigError("--lora-layers: this model's config does not say how many layers it has; use 0 (all)")
        if count > n:
            raise ConfigError(f"--lora-layers {count}: the model has {n} layers")
        layers = list(range(n - count, n))
        if targets == "all-linear":  # PEFT takes a layer list only with module names: the linear layers inside blocks
            import torch

            targets = sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
                              if isinstance(mod, torch.nn.Linear) and ".layers." in name})
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
                      layers_to_transform=layers, task_type="CAUSAL_LM", bias="none")


def sft_config(cfg: TrainConfig, output_dir: Path, *, lr: float, epochs: float, batch_size: int, max_length: int,
               device: str, bf16: bool):
    """The TRL `SFTConfig` for our contract-tokenized rows (fp32 on CPU, bf16 + checkpointing on CUDA)."""
    from trl import SFTConfig

    gc = device == "cuda" and cfg.gradient_checkpointing
    distributed = world_size() > 1
    return SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        max_steps=cfg.max_steps,
        learning_rate=lr,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a fraction of the steps
        weight_decay=0.0,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=bf16,  # TRL defaults to bf16, which fails on CPU: decided here
        fp16=False,
        use_cpu=device == "cpu",
        gradient_checkpointing=None,  # deprecated alias; activation_checkpointing is the setting
        activation_checkpointing=gc,
        activation_checkpointing_kwargs={"use_reentrant": False} if gc else None,
        max_length=max_length,
        packing=cfg.packing,
        packing_strategy="bfd",
        completion_only_loss=True,  # our rows carry `completion_mask` (not prompt/completion columns): say so
        shuffle_dataset=True,
        train_sampling_strategy="group_by_length" if cfg.group_by_length and not cfg.packing else "random",
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        report_to=[] if cfg.report_to == "none" else [cfg.report_to],
        disable_tqdm=True,  # our own bar and loss lines (Progress) instead
        ddp_backend=("gloo" if device == "cpu" else "nccl") if distributed else None,
        ddp_find_unused_parameters=False if distributed else None,
        dataloader_num_workers=0,
    )


def make_trainer(model, tokenizer, args, train_rows: list[dict], peft_config=None, callbacks=()):
    """A TRL SFTTrainer over pre-tokenized rows: TRL turns `completion_mask` into labels (-100 on the prompt); the loss
    runs the output head on the answer positions only (`answer_loss`)."""
    import warnings

    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    # TRL asks PEFT models the deprecated `is_gradient_checkpointing`: a library-internal notice, not the user's.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    trainer = answer_loss.trainer_class()(model=model, args=args, train_dataset=Dataset.from_list(train_rows),
                                          processing_class=tokenizer, peft_config=peft_config,
                                          callbacks=list(callbacks))
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; Progress prints one plain line instead
    return trainer


def _wait_for(path: Path, timeout: float = 600) -> Path:
    """Block until rank 0 has written `path` (used by the other ranks under torchrun)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f}s for {path}")
        time.sleep(0.5)
    time.sleep(0.5)
    return path


