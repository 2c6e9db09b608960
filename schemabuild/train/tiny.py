"""Build the embedded tiny base model on the spot: a byte-level BPE tokenizer trained on the task's own
text, a chat template with `{% generation %}` marks, and a randomly initialised small Llama.

Used when no hub model can be had (offline) and by the tests. Saved with `save_pretrained`
(safetensors), so everything downstream loads it through the same `from_pretrained` path as a hub model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterable

from schemabuild.contract import canonical_json, student_prompt

IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<|pad|>"

# ChatML, with the assistant turn (content and end-of-turn) wrapped in generation marks so that
# `return_assistant_tokens_mask` / TRL's assistant-only loss can find it.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclasses.dataclass
class TinyConfig:
    """Size of the embedded tiny model (defaults sized for a full offline run in minutes on 2 CPU cores)."""

    vocab_size: int = 1024
    """BPE vocabulary size (the byte alphabet and special tokens included)."""
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    max_positions: int = 1024
    seed: int = 0


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """A byte-level BPE `PreTrainedTokenizerFast` trained on `texts`, with the ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The template's fixed text is part of every sequence: make sure it is in the corpus.
    corpus = list(texts) + [CHAT_TEMPLATE, "system\nuser\nassistant\n", '{"":null,[]}']
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=IM_END, pad_token=PAD, bos_token=None, unk_token=None,
        model_max_length=4096,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def task_texts(task, extra: Iterable[str] = ()) -> list[str]:
    """The text a tiny tokenizer is trained on: instructions, examples, hints, schema and `extra` inputs."""
    texts = [task.instructions, json.dumps(task.output.model_json_schema())]
    for ex in task.examples:
        texts += [ex.input, canonical_json(ex.output)]
    for values in task.hints.values():
        texts += list(values)
    texts += list(extra)
    return texts


def build_tiny(task, out_dir: str | Path, extra_texts: Iterable[str] = (), config: TinyConfig | None = None) -> Path:
    """Write a fresh tiny model + tokenizer for `task` to `out_dir` and return the path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = config or TinyConfig()
    tokenizer = train_tokenizer(task_texts(task, extra_texts), config.vocab_size)
    # The student prompt (and, for `--compare base`, the instructions) open every prompt unchanged; as one token
    # each they cost one position instead of ~10-200,
    # which makes the tiny model's training ~5x cheaper. Any other text still tokenizes byte-level BPE.
    from tokenizers import AddedToken


    tokenizer.add_tokens([AddedToken(text, normalized=False, special=False)
                          for text in (student_prompt(task), task.instructions)])
    torch.manual_seed(config.seed)
    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        max_position_embeddings=config.max_positions,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(model_config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "TINY").write_text("embedded tiny model built by schemabuild.tiny\n")
    return out
