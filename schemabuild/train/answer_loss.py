"""The training loss on the answer positions only: the output head runs where a label is, not on every token.

Our rows train on the JSON answer and the end-of-turn only (`completion_mask`): about a quarter of the tokens of a
tool_picker row. TRL's loss runs the output head (49k-token vocabulary for SmolLM2) on every position and then
computes its entropy and token-accuracy metrics over all of them. Here the backbone's hidden states are gathered at
the labelled positions first, so the head, the softmax and the cross-entropy see only those: the same loss value and
gradients (the unlabelled positions add nothing to either), for less work. Measured side by side on SmolLM2-135M
LoRA, 2 CPU cores, batch 8 (bench/answer_loss.py): see BENCHMARKS.md "Answer-only loss".

It applies where it is exact and safe; anything else keeps TRL's own loss:
- a model whose logits are its output head's product (`PLAIN_HEAD_TYPES`: no soft-capping or logit scale);
- one process (under DDP the wrapper's own forward must run, or the gradients are not synchronised);
- padded rows with labels (TRL's collator gives them; packed, padding-free rows keep TRL's loss).
"""

from __future__ import annotations

PLAIN_HEAD_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral", "smollm3"})
"""Model types whose logits are exactly `lm_head(final hidden state)` (no soft-capping, scaling or bias)."""


def unwrap(model):
    """The transformers model under a PEFT wrapper (or the model itself)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def applies(model) -> bool:
    """True when the answer-only loss is exact for `model` as passed to the trainer's `compute_loss`."""
    import torch

    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return False
    inner = unwrap(model)
    config = getattr(inner, "config", None)
    return (getattr(config, "model_type", None) in PLAIN_HEAD_TYPES
            and callable(getattr(inner, "get_decoder", None))
            and callable(getattr(inner, "get_output_embeddings", None))
            and getattr(inner.get_output_embeddings(), "bias", None) is None)


def answer_loss(model, inputs: dict, num_items: int | None = None):
    """Mean next-token cross-entropy over the labelled positions (sum / `num_items` when the Trainer counts them
    across accumulation steps), with the output head applied to those positions only."""
    import torch

    inner = unwrap(model)
    labels = inputs["labels"]
    body = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids") if inputs.get(k) is not None}
    hidden = inner.get_decoder()(**body, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != -100
    logits = inner.get_output_embeddings()(hidden[:, :-1][keep]).float()
    total = torch.nn.functional.cross_entropy(logits, targets[keep], reduction="sum")
    count = keep.sum() if num_items is None else num_items
    return total / torch.as_tensor(count, device=total.device).clamp(min=1)


def trainer_class():
    """TRL's SFTTrainer with the answer-only loss where it `applies` (TRL's own loss elsewhere)."""
    from trl import SFTTrainer

    class AnswerLossTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            padded = "attention_mask" in inputs and "shift_labels" not in inputs  # not packed / padding-free rows
            if return_outputs or "labels" not in inputs or not padded or not applies(model):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            return answer_loss(model, inputs, num_items_in_batch)

    return AnswerLossTrainer
