"""The train/serve contract: canonical JSON, the grammar schema, token encoding and contract.json checks."""

from __future__ import annotations

import json
from typing import Literal, Optional

import pytest
from pydantic import BaseModel

from schemabuild.contract import (
    CANONICAL,
    ContractError,
    build_contract,
    canonical_json,
    check_contract,
    encode_example,
    encode_prompt,
    end_of_turn,
    grammar_schema,
    load_contract,
    render_prompt,
    save_contract,
    schema_hash,
)
from schemabuild.task import Example, Task


class Item(BaseModel):
    unit_price: float
    name: str


class Invoice(BaseModel):
    vendor: Optional[str] = None
    items: list[Item]
    currency: Literal["EUR", "USD"] = "EUR"


def test_canonical_json_keeps_field_order_explicit_nulls_compact_and_utf8():
    inv = Invoice(items=[Item(name="Café", unit_price=2.5)], currency="USD")
    text = canonical_json(inv)
    assert text == '{"vendor":null,"items":[{"unit_price":2.5,"name":"Café"}],"currency":"USD"}'
    # parsing the canonical text and writing it again gives the same bytes
    assert canonical_json(Invoice.model_validate(json.loads(text))) == text
    assert CANONICAL["nulls"] == "explicit" and CANONICAL["separators"] == [",", ":"]


def test_grammar_schema_requires_every_key_at_every_depth():
    schema = grammar_schema(Invoice)
    assert schema["required"] == ["vendor", "items", "currency"]
    assert schema["additionalProperties"] is False
    item = schema["$defs"]["Item"]
    assert item["required"] == ["unit_price", "name"] and item["additionalProperties"] is False
    # the Pydantic schema itself is left alone (vendor and currency stay optional there)
    assert Invoice.model_json_schema()["required"] == ["items"]
    assert schema_hash(Invoice) == schema_hash(schema) != schema_hash(Item)


def test_prompt_and_target_tokens(tiny_model_dir, tool_picker):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    eot, stop_ids = end_of_turn(tok)
    assert eot == "<|im_end|>" and stop_ids[0] == tok.convert_tokens_to_ids("<|im_end|>")
    text = "billy play some daft punk"
    prompt = render_prompt(tok, tool_picker.instructions, text)
    assert prompt.endswith("<|im_start|>assistant\n") and text in prompt
    target = canonical_json(tool_picker.output(tool="music.play", query="daft punk"))
    row = encode_example(tok, tool_picker.instructions, text, target)
    p = encode_prompt(tok, tool_picker.instructions, text)
    assert row["input_ids"][: len(p)] == p and row["completion_mask"] == [0] * len(p) + [1] * (len(row["input_ids"]) - len(p))
    assert row["input_ids"][-1] == stop_ids[0]  # the end-of-turn token is a trained target
    assert tok.decode(row["input_ids"][len(p):-1]) == target
    # the chat template's own rendering of the full conversation agrees token for token
    full = tok.apply_chat_template(
        [{"role": "system", "content": tool_picker.instructions}, {"role": "user", "content": text},
         {"role": "assistant", "content": target}], tokenize=False)
    assert full.startswith(tok.decode(row["input_ids"]))


def test_contract_mismatches_are_named(tiny_model_dir, tool_picker, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    contract = build_contract(tool_picker, tok, base_model="tiny", adapter=False)
    save_contract(contract, tmp_path)
    assert load_contract(tmp_path) == contract
    check_contract(contract, tool_picker, tok)  # matches

    changed_schema = Task(name="tool_picker", instructions=tool_picker.instructions, output=Invoice,
                          examples=[Example("x", Invoice(items=[]))])
    with pytest.raises(ContractError, match="output schema changed"):
        check_contract(contract, changed_schema, tok)
    other_words = Task(name="tool_picker", instructions="Be brief.", output=tool_picker.output,
                       examples=tool_picker.examples[:1])
    with pytest.raises(ContractError, match="instructions changed"):
        check_contract(contract, other_words, tok)
    with pytest.raises(ContractError, match="trained for task 'tool_picker', not 'other'"):
        check_contract(contract, Task(name="other", instructions="i", output=Invoice,
                                      examples=[Example("x", Invoice(items=[]))]), tok)
    tok.chat_template = tok.chat_template.replace("<|im_start|>", "<|im_start|> ")
    with pytest.raises(ContractError, match="chat template differs"):
        check_contract(contract, tool_picker, tok)
    with pytest.raises(ContractError, match="missing"):
        load_contract(tmp_path / "nowhere")


def test_a_tokenizer_without_chat_template_is_a_clear_error(tiny_model_dir, tool_picker):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = None
    with pytest.raises(ContractError, match="no chat template"):
        render_prompt(tok, tool_picker.instructions, "hi")
