"""Export a trained model as one GGUF file for llama.cpp, or as a GGUF plus an Ollama `Modelfile`.

    schemabuild export tool_picker --format gguf                 # q8_0 (default), f16 or f32 with --quant
    schemabuild export tool_picker --format ollama --out DIR     # DIR/<task>-q8_0.gguf + DIR/Modelfile

The file is written by our own code with the `gguf` package: the LoRA merged into its base, the tensors under
llama.cpp's names, the hyperparameters, the byte-level BPE tokenizer (tokens, token types, merges, special ids, the
pre-tokenizer name llama.cpp knows it by) and the chat template. Supported architectures: llama and qwen2 (the
`--base` ladder: the tiny base, SmolLM2, Qwen2.5).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from schemabuild.contract import grammar_schema, render_prompt, system_prompt
from schemabuild.errors import ConfigError
from schemabuild.models import load_model
from schemabuild.runs import Run

GGUF_FORMATS = ("gguf", "ollama")
QUANTS = ("q8_0", "f16", "f32")
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2"}  # transformers model_type: llama.cpp architecture name

# llama.cpp names a byte-level BPE pre-tokenizer by the regex it splits with. Ours are recognised by shape:
# GPT-2's own split (ByteLevel with its regex: the tiny base, and SmolLM2 as transformers converts it: its vocabulary
# has no token with a digit beside another character, so llama.cpp's "smollm" digit split tokenizes the same) and
# Qwen2's split regex followed by a plain ByteLevel.
PRE_GPT2 = "gpt-2"
PRE_QWEN2 = "qwen2"


def export_gguf(task, run_dir, out=None, quant: str = "q8_0", say=print) -> Path:
    """Write the run's model (adapter merged) as one GGUF file at `out` (a file, or a folder to put it in)."""
    run = Run(run_dir)
    path = gguf_path(task, run.export("gguf") if out is None else Path(out), quant)
    write_run_gguf(task, run, path, quant, say)
    return path


def export_ollama(task, run_dir, out=None, quant: str = "q8_0", say=print) -> Path:
    """Write the GGUF and an Ollama `Modelfile` into the folder `out`; print the create/run/serve commands."""
    run = Run(run_dir)
    folder = run.export("ollama") if out is None else Path(out)
    if folder.suffix == ".gguf" or folder.is_file():
        raise ConfigError(f"--out {folder}: --format ollama writes a folder (GGUF + Modelfile); give a folder path")
    path = gguf_path(task, folder, quant)
    tokenizer, contract = write_run_gguf(task, run, path, quant, say)
    modelfile = folder / "Modelfile"
    modelfile.write_text(ollama_modelfile(task, tokenizer, contract, path.name))
    say(f"Modelfile written to {modelfile}\n")
    say(run_instructions(task, contract, folder, path))
    return folder


def serving_gguf(task, model_dir, quant: str = "q8_0", say=print) -> Path:
    """The GGUF `--engine llamacpp` serves for `model_dir` (`Run.serving_gguf` beside it): written from the model
    when missing or older than the model's files, else reused."""
    model_dir = Path(model_dir)
    path = Run(model_dir.parent).serving_gguf(task.name, quant)
    newest = max((f.stat().st_mtime for f in model_dir.iterdir() if f.is_file()), default=0.0)
    if not path.is_file() or path.stat().st_mtime < newest:
        write_model_gguf(task, model_dir, path, quant, say)
    return path


def write_run_gguf(task, run: Run, path: Path, quant: str, say=print):
    """Merge the run's model and write it to `path`; returns (tokenizer, contract)."""
    return write_model_gguf(task, run.model, path, quant, say)


def write_model_gguf(task, model_dir, path: Path, quant: str, say=print):
    """Merge the model in `model_dir` and write it to `path`; returns (tokenizer, contract)."""
    if quant not in QUANTS:
        raise ConfigError(f"--quant {quant}: unknown (choose one of {', '.join(QUANTS)})")
    model, tokenizer, contract = load_model(task, model_dir, device="cpu", merge=True)
    arch = architecture(model.config)
    path.parent.mkdir(parents=True, exist_ok=True)
    say(f"writing {path.name} ({arch}, {quant}) to {path.parent}")
    write_gguf(path, model, tokenizer, contract, arch, quant, name=f"{task.name} ({contract.get('base_model')})")
    say(f"GGUF written to {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return tokenizer, contract


def gguf_path(task, out: Path, quant: str) -> Path:
    """`out` itself when it names a .gguf file, else `<out>/<task>-<quant>.gguf`."""
    return out if out.suffix == ".gguf" else out / f"{task.name}-{quant}.gguf"


def architecture(config) -> str:
    """llama.cpp's architecture name for a transformers config; ConfigError (one line) for anything unsupported."""
    kind = getattr(config, "model_type", None)
    if kind not in ARCHITECTURES:
        raise ConfigError(f"GGUF export supports the {' and '.join(ARCHITECTURES)} architectures (the --base ladder); "
                          f"this model is {kind!r}: use `--format merged` and llama.cpp's convert_hf_to_gguf.py")
    rope = rope_settings(config)
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(f"GGUF export supports plain RoPE only; this model uses rope_type {rope['rope_type']!r}")
    if getattr(config, "use_sliding_window", False):
        raise ConfigError("GGUF export does not support sliding-window attention; use `--format merged`")
    return ARCHITECTURES[kind]


def rope_settings(config) -> dict:
    """RoPE parameters from a transformers 5 config (`rope_parameters`) or an older one (`rope_theta`, `rope_scaling`)."""
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    rope.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return rope


# ---- writing ---------------------------------------------------------------------------------------------------

def write_gguf(path: Path, model, tokenizer, contract: dict, arch: str, quant: str, name: str) -> None:
    """Hyperparameters, tokenizer, chat template and tensors of `model` into one GGUF file (written, then renamed)."""
    import gguf

    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(tmp, arch)
    writer.add_type("model")
    writer.add_name(name)
    write_hyperparameters(writer, model.config, arch, quant)
    write_tokenizer(writer, tokenizer, contract, model.config.vocab_size)
    for gguf_name, array, qtype in gguf_tensors(model, arch, quant):
        writer.add_tensor(gguf_name, array, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)


def write_hyperparameters(writer, config, arch: str, quant: str) -> None:
    """The `<arch>.*` keys llama.cpp reads for a llama / qwen2 decoder, and the file type."""
    import gguf

    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_rope_freq_base(float(rope_settings(config)["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim * heads != config.hidden_size:  # llama.cpp derives the head size from these two unless told
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]
    writer.add_file_type(file_type)
    if quant == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def gguf_tensors(model, arch: str, quant: str):
    """(llama.cpp name, array, GGML type) for every weight: 1-D ones in f32, 2-D ones in `quant` (f16 where a row does
    not fill whole q8_0 blocks). A tied output projection is left out: llama.cpp reuses the embedding then."""
    import gguf
    import torch

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ConfigError(f"GGUF export: no llama.cpp name for the tensor {hf_name!r} of this {arch} model")
        array = tensor.detach().to(torch.float32).cpu().numpy()
        if arch == "llama" and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            array = rope_interleave(array, heads if "q_proj" in hf_name else kv_heads)
        yield name, *encode_tensor(array, quant)


def rope_interleave(weight, n_heads: int):
    """Reorder a llama q/k projection's output rows from transformers' rotate-half RoPE layout (each head's first half
    pairs with its second half) to llama.cpp's interleaved one (rows 2i and 2i+1 pair): same attention, other order."""
    rows = weight.shape[0]
    half = rows // n_heads // 2
    return weight.reshape(n_heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def encode_tensor(array, quant: str):
    """(data, GGML type) for one float32 array."""
    import gguf
    import numpy as np

    types = gguf.GGMLQuantizationType
    if array.ndim < 2 or quant == "f32":
        return np.ascontiguousarray(array, dtype=np.float32), types.F32
    block = gguf.GGML_QUANT_SIZES[types.Q8_0][0]
    if quant == "f16" or array.shape[-1] % block:
        return np.ascontiguousarray(array, dtype=np.float16), types.F16
    return gguf.quants.quantize(np.ascontiguousarray(array), types.Q8_0), types.Q8_0


def write_tokenizer(writer, tokenizer, contract: dict, vocab_size: int) -> None:
    """The byte-level BPE tokenizer as llama.cpp reads it ("gpt2" model), its special ids and the chat template.

    End of sequence is the contract's end-of-turn token (what the model was trained to stop on). No BOS is added:
    the chat template writes every token the model was trained with.
    """
    tokens, types = vocab_tokens(tokenizer, vocab_size)
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    if state["model"].get("type") != "BPE" or state.get("decoder", {}).get("type") != "ByteLevel":
        raise ConfigError("GGUF export supports byte-level BPE tokenizers only (the llama and qwen2 bases have one)")
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(state.get("pre_tokenizer")))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    eot = int(contract["stop_ids"][0])
    writer.add_eos_token_id(eot)
    writer.add_eot_token_id(eot)
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(tokenizer.bos_token_id)
    if tokenizer.unk_token_id is not None:
        writer.add_unk_token_id(tokenizer.unk_token_id)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_chat_template(runtime_chat_template(tokenizer.chat_template))


def runtime_chat_template(template: str) -> str:
    """The chat template without transformers' `{% generation %}` marks (they only tell training which tokens are the
    answer; llama.cpp's and Ollama's Jinja engines reject the unknown tag). It renders the same text."""
    return re.sub(r"{%-?\s*(end)?generation\s*-?%}", "", template)


def vocab_tokens(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token texts by id (byte-level spelling; added tokens as their text) and llama.cpp token types: added special
    tokens CONTROL, other added tokens USER_DEFINED (matched whole in the text), ids the tokenizer lacks (an embedding
    padded past the vocabulary) UNUSED placeholders."""
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    if len(by_id) > vocab_size:
        raise ConfigError(f"the tokenizer has {len(by_id)} tokens but the model's embedding only {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        if i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    return tokens, [int(t) for t in types]


def pre_tokenizer_name(pre: dict | None) -> str:
    """llama.cpp's name for a tokenizer.json pre-tokenizer (see PRE_GPT2 / PRE_QWEN2); ConfigError for others."""
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2_SPLIT

    steps = (pre or {}).get("pretokenizers", [pre] if pre else [])
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return PRE_GPT2
    if kinds == ["Split", "ByteLevel"] and steps[0].get("pattern", {}).get("Regex") == QWEN2_SPLIT \
            and not steps[1].get("use_regex", True):
        return PRE_QWEN2
    raise ConfigError(f"GGUF export: a pre-tokenizer llama.cpp would split differently ({kinds}); "
                      "supported: GPT-2's byte-level split and Qwen2's")


# ---- Ollama ----------------------------------------------------------------------------------------------------

SYSTEM_MARK, USER_MARK = "\u2063SYSTEM\u2063", "\u2063USER\u2063"


def ollama_template(tokenizer, end_of_turn: str) -> str:
    """The chat template in Ollama's Go-template syntax: the prompt our chat template renders for [system, user]
    (so Ollama sends exactly the tokens the model was trained on), then the answer and the end-of-turn token."""
    text = render_prompt(tokenizer, SYSTEM_MARK, USER_MARK)
    if text.count(SYSTEM_MARK) != 1 or text.count(USER_MARK) != 1:
        raise ConfigError("the chat template does not write the system and user messages once each; "
                          "write the Ollama TEMPLATE by hand")
    literal = text.replace("{{", "{{ \"{{\" }}")  # Go templates: a literal "{{" must be printed as a string
    return (literal.replace(SYSTEM_MARK, "{{ .System }}").replace(USER_MARK, "{{ .Prompt }}")
            + "{{ .Response }}" + end_of_turn)


def ollama_modelfile(task, tokenizer, contract: dict, gguf_name: str) -> str:
    """A Modelfile: the GGUF, the chat template, the student system prompt, the end-of-turn stop, greedy decoding."""
    template = ollama_template(tokenizer, contract["end_of_turn"])
    system = system_prompt(task, contract)
    for what, text in (("chat template", template), ("system prompt", system)):
        if '"""' in text:
            raise ConfigError(f'the {what} contains """, which a Modelfile cannot quote')
    return (f"# Ollama model for the schemabuild task {task.name!r}: ollama create {task.name} -f Modelfile\n"
            f"FROM ./{gguf_name}\n"
            f'TEMPLATE """{template}"""\n'
            f'SYSTEM """{system}"""\n'
            f"PARAMETER stop {json.dumps(contract['end_of_turn'])}\n"
            "PARAMETER temperature 0\n"
            "PARAMETER top_k 1\n"
            "PARAMETER repeat_penalty 1\n"  # Ollama's default (1.1) would bend greedy decoding away from training
            "PARAMETER num_ctx 2048\n")


def run_instructions(task, contract: dict, folder: Path, gguf_file: Path) -> str:
    """The exact `ollama create` command, an Ollama request with the task's JSON schema as `format`, and the
    equivalent llama-server command with `--json-schema`."""
    schema = json.dumps(grammar_schema(task.output), separators=(",", ":"))
    system = system_prompt(task, contract)
    ollama_body = json.dumps({"model": task.name, "stream": False, "format": json.loads(schema),
                              "messages": [{"role": "user", "content": "<your message>"}]}, separators=(",", ":"))
    server_body = json.dumps({"temperature": 0, "messages": [{"role": "system", "content": system},
                                                             {"role": "user", "content": "<your message>"}]},
                             separators=(",", ":"))
    return (f"Ollama:\n  cd {folder.resolve()} && ollama create {task.name} -f Modelfile\n"
            f"  curl -s http://localhost:11434/api/chat -d {shlex.quote(ollama_body)}\n\n"
            "llama.cpp (the same GGUF, the same schema as a grammar; send the system prompt yourself):\n"
            f"  llama-server -m {gguf_file.resolve()} --jinja --temp 0 --json-schema {shlex.quote(schema)}\n"
            f"  curl -s http://localhost:8080/v1/chat/completions -d {shlex.quote(server_body)}\n")
