"""Weights' precision for inference, chosen per machine at start and announced in one line.

    choice = choose_precision("auto", "cpu")     # Precision(name="fp32", line="precision: fp32 (auto) - this CPU ...")
    model = apply_precision(model, choice)       # called by the one loader (models.py) on every model it serves

`auto` picks, from measurements on the tool_picker model (bench/precision.py, BENCHMARKS.md "Precision"):
- cuda: bf16 (tensor cores; what training used);
- a CPU with avx512_bf16 or amx_bf16: bf16 (native bf16 matmuls; bf16 kept greedy answers closer to fp32 than int8);
- any other CPU: fp32. Dynamic int8 (`--precision int8`: int8 weights, activations quantized per step) was
  1.3-1.5x faster on an AVX2 CPU but changed most greedy answers and cost tool accuracy (17 points on the run's
  own validation rows): the activations' outlier channels do not survive per-tensor int8. So it is offered,
  with that warning in its line, and never chosen by `auto`.
int8 keeps the embedding, the output head (lm_head) and LoRA's own small matrices in fp32. LoRA adapters served
unmerged (several on one base) keep their A/B matrices in fp32 on top of the int8 base linears, so multi-adapter
serving works the same way.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import warnings
from pathlib import Path

from schemabuild.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names of the native bf16 matmul instructions
KEEP_FP32 = ("lm_head", "lora_")
WAIT_CHOICE: dict[str, str] = {}  # "line": what choose_wait_policy decided in this process, and why  # module names int8 leaves alone (see the module docstring)


@dataclasses.dataclass(frozen=True)
class Precision:
    """A resolved precision and the one line that announces it."""

    name: str
    """fp32, bf16 or int8."""
    device: str
    line: str
    """e.g. "precision: int8 (dynamic, x86 engine) - this CPU has avx2, no bf16"."""
    engine: str | None = None
    """The quantized engine int8 runs on (x86, fbgemm, qnnpack), else None."""


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where that file does not exist."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 / ARM
            return set(value.split())
    return set()


def runnable_others(samples: int = 5, gap: float = 0.05, stat: str | Path = "/proc/stat") -> float | None:
    """How many threads besides this one were ready to run (the median of `samples` reads of /proc/stat's
    procs_running, minus this process's one); None where that file does not exist."""
    counts = []
    for i in range(samples):
        try:
            lines = Path(stat).read_text().splitlines()
        except OSError:
            return None
        counts += [int(line.split()[1]) - 1 for line in lines if line.startswith("procs_running ")]
        if i + 1 < samples:
            time.sleep(gap)
    return sorted(counts)[len(counts) // 2] if counts else None


def choose_wait_policy(environ=os.environ, others: float | None | str = "detect", torch_loaded: bool | None = None) -> str:
    """Set OMP_WAIT_POLICY for CPU training before torch loads (libgomp reads it once), and say why in a few words.

    Measured (bench/wait_policy.py, BENCHMARKS.md "Session 6"): on 2 idle cores, threads that spin while waiting
    train 1.19x faster than passive ones; beside one busy process they train 2x slower. So: ACTIVE when no other
    thread is ready to run at the start, else PASSIVE. A value the user set is kept; too late once torch is loaded.
    Called by `schemabuild train` only: a server with spinning threads would burn its cores while idle.
    """
    if environ.get("OMP_WAIT_POLICY"):
        return f"OMP_WAIT_POLICY={environ['OMP_WAIT_POLICY']} (yours)"
    if ("torch" in sys.modules) if torch_loaded is None else torch_loaded:
        return "libgomp's default OpenMP waiting (torch was loaded first)"
    others = runnable_others() if others == "detect" else others
    busy = others is None or others >= 1
    environ["OMP_WAIT_POLICY"] = "PASSIVE" if busy else "ACTIVE"
    why = "no load reading" if others is None else f"{others:g} other threads ready to run"
    WAIT_CHOICE["line"] = (f"OMP_WAIT_POLICY={environ['OMP_WAIT_POLICY']} ({why}; "
                           f"{'spinning threads train 2x slower beside other jobs' if busy else 'spinning threads train 1.19x faster on idle cores'})")
    return WAIT_CHOICE["line"]


def wait_policy_line(environ=os.environ) -> str:
    """What OpenMP waiting this process trains with, and who chose it, in a few words."""
    if WAIT_CHOICE.get("line", "").startswith(f"OMP_WAIT_POLICY={environ.get('OMP_WAIT_POLICY')} "):
        return WAIT_CHOICE["line"]
    if environ.get("OMP_WAIT_POLICY"):
        return f"OMP_WAIT_POLICY={environ['OMP_WAIT_POLICY']} (yours)"
    return "libgomp's default OpenMP waiting (`schemabuild train` chooses; set OMP_WAIT_POLICY to choose yourself)"


def int8_engine() -> str | None:
    """The quantized engine dynamic int8 runs on here (x86 > fbgemm > qnnpack), or None."""
    import torch

    engines = torch.backends.quantized.supported_engines
    return next((e for e in ("x86", "fbgemm", "qnnpack") if e in engines), None)


def describe_cpu(flags: set[str]) -> str:
    """A few words on the CPU's vector units: "avx2, no bf16", "avx512, avx512_bf16, amx_bf16"."""
    vector = [f for f in ("avx512f", "avx2", "asimd") if f in flags][:1]
    bf16 = [f for f in BF16_FLAGS if f in flags]
    return ", ".join(vector + (bf16 or ["no bf16"]))


def choose_precision(requested: str | None, device: str, flags: set[str] | None = None,
                     engine: str | None = "detect") -> Precision:
    """The precision `requested` (fp32 / bf16 / int8 / auto or None) resolves to on `device`, with its line.

    `flags` and `engine` default to this machine's; tests pass others. A request this machine cannot honour is a
    ConfigError naming --precision; bf16 forced on a CPU without native bf16 runs, with a warning in the line.
    """
    requested = (requested or "auto").lower()
    if requested not in PRECISIONS:
        raise ConfigError(f"--precision {requested}: expected one of {', '.join(PRECISIONS)}")
    if str(device).startswith("cuda"):
        if requested == "int8":
            raise ConfigError("--precision int8: CPU only (dynamic int8 kernels); on cuda use bf16 (the default) or fp32")
        name = "fp32" if requested == "fp32" else "bf16"
        why = "forced" if requested != "auto" else "cuda default"
        return Precision(name, str(device), f"precision: {name} ({why}) on {device}")
    flags = cpu_flags() if flags is None else flags
    engine = int8_engine() if engine == "detect" else engine
    cpu = describe_cpu(flags)
    native_bf16 = any(f in flags for f in BF16_FLAGS)
    if requested == "auto":
        requested = "bf16" if native_bf16 else "fp32"
        how = "auto"
    else:
        how = "forced"
    if requested == "int8":
        if not engine:
            raise ConfigError("--precision int8: this torch build has no quantized engine (x86/fbgemm/qnnpack); "
                              "use --precision fp32")
        return Precision("int8", "cpu", f"precision: int8 (dynamic, {engine} engine; {how}) - this CPU has {cpu}; "
                                        "warning: faster, but it changes greedy answers (see BENCHMARKS.md)", engine=engine)
    if requested == "bf16" and not native_bf16:
        return Precision("bf16", "cpu", f"precision: bf16 ({how}) - warning: this CPU has {cpu}: bf16 matmuls are "
                                        "emulated and slower than fp32; --precision int8 or fp32 run faster here")
    return Precision(requested, "cpu", f"precision: {requested} ({how}) - this CPU has {cpu}")


def apply_precision(model, precision: Precision):
    """`model` with its weights in `precision` (in place where possible; returns the model to use)."""
    import torch

    if precision.name == "bf16":
        return model.to(torch.bfloat16)
    if precision.name == "fp32":
        return model.to(torch.float32)
    return quantize_int8(model, precision.engine)


def int8_targets(model, keep=KEEP_FP32) -> set[str]:
    """Names of the nn.Linear modules int8 quantizes: every one whose name has no part in `keep` (by default the
    output head and LoRA's own matrices)."""
    import torch

    return {name for name, module in model.named_modules() if type(module) is torch.nn.Linear
            and not any(part.startswith(k) for part in name.split(".") for k in keep)}


def quantize_int8(model, engine: str | None, keep: tuple[str, ...] = KEEP_FP32):
    """Dynamic int8 (per-output-channel weights) of `int8_targets(model, keep)`; a PEFT model keeps its LoRA in fp32."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if engine:
        torch.backends.quantized.engine = engine
    model = model.to(torch.float32)
    spec = {name: per_channel_dynamic_qconfig for name in int8_targets(model, keep)}
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao on every call
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)


def weight_dtypes(model) -> dict[str, int]:
    """How many weight tensors of each dtype `model` holds, read from the modules themselves (int8 linears count
    as "qint8"): what tests and the GPU check assert, rather than the flags that asked for it."""

    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, dynamic_linear()):
            weight = module.weight()  # its packed int8 tensor, unpacked
        else:  # only a module's own weight: PEFT's LoRA wrappers forward `weight` to their base layer
            weight = dict(module.named_parameters(recurse=False)).get("weight")
        if weight is not None:
            key = str(weight.dtype).replace("torch.", "")
            counts[key] = counts.get(key, 0) + 1
    return counts


def dynamic_linear() -> type:
    """torch's dynamic int8 Linear class (what quantize_int8 swaps nn.Linear for)."""
    from torch.ao.nn.quantized.dynamic import Linear

    return Linear
