"""Request bodies as pydantic models, and the one parser every route's body goes through."""

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemabuild.inference.request import MIN_TEMPERATURE
from schemabuild.serve.errors import APIError, first_line, param_name, validation_error

MAX_INT = 2**31 - 1
MIN_TOP_P = 1e-6


class _Strict(BaseModel):
    # Wrong JSON types are errors (no "3" → 3); unknown fields are ignored like OpenAI-compatible servers do.
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


class ContentPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class JSONSchemaFormat(_Strict):
    name: str | None = None
    schema_: dict | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class StreamOptions(_Strict):
    include_usage: bool | None = None


class Sampling(_Strict):
    """The numeric request fields of predict and chat, checked in one place: finite, in range, no denormals."""

    max_tokens: int | None = Field(default=None, ge=1, le=MAX_INT)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)

    @field_validator("temperature")
    @classmethod
    def _no_tiny_temperature(cls, v: float | None) -> float | None:
        # logits / 1e-320 overflow to inf and the probabilities to NaN: refuse what cannot be computed.
        if v is not None and 0 < v < MIN_TEMPERATURE:
            raise ValueError(f"must be 0 (greedy) or at least {MIN_TEMPERATURE}")
        return v

    @field_validator("top_p")
    @classmethod
    def _no_tiny_top_p(cls, v: float | None) -> float | None:
        if v is not None and v < MIN_TOP_P:  # rounds to 0 in float32: every token would be dropped
            raise ValueError(f"must be at least {MIN_TOP_P}")
        return v


class ChatRequest(Sampling):
    """The subset of the OpenAI chat completions request this server honours."""

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    response_format: ResponseFormat | None = None
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_INT)
    n: int | None = Field(default=None, ge=1, le=MAX_INT)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    logprobs: bool | None = None
    tools: list | None = None


class PredictRequest(Sampling):
    """Body of POST /v1/tasks/{task}/predict."""

    input: str = Field(min_length=1)


def parse_body(raw: bytes, model: type[BaseModel]):
    """The JSON body validated against `model`; every failure is a 400 APIError naming the field."""
    if not raw.strip():
        raise APIError(400, "the request body is empty; send a JSON object", code="invalid_json")
    try:
        data = json.loads(raw, parse_constant=_no_constant, parse_int=_int)
    except UnicodeDecodeError:
        raise APIError(400, "the request body is not UTF-8", code="invalid_json") from None
    except json.JSONDecodeError as exc:
        raise APIError(400, f"malformed JSON body: {exc.msg} at line {exc.lineno} column {exc.colno}",
                       code="invalid_json") from None
    except RecursionError:
        raise APIError(400, "malformed JSON body: nested too deeply", code="invalid_json") from None
    except ValueError as exc:  # a number past Python's digit limit, NaN/Infinity
        raise APIError(400, f"malformed JSON body: {first_line(exc)[:120]}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, not {type(data).__name__}", code="invalid_json")
    bad = _bad_unicode(data)
    if bad is not None:
        param = param_name(bad)
        raise APIError(400, f"{param or 'body'}: not valid Unicode (a lone surrogate)", param=param,
                       code="invalid_value")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None
    except RecursionError:
        raise APIError(400, "the request body is nested too deeply", code="invalid_value") from None


def _int(text: str):
    """JSON integers; past Python's digit limit an infinite float, which every field then refuses by name."""
    if len(text) <= 4000:
        return int(text)
    return float("-inf") if text.startswith("-") else float("inf")


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _bad_unicode(value: Any, path: tuple = (), depth: int = 0) -> tuple | None:
    """The location of the first string (or key) in `value` that is not valid Unicode, else None."""
    if depth > 200:
        return None  # validation refuses bodies this deep anyway
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            found = _bad_unicode(k, path + (k,), depth + 1) if isinstance(k, str) else None
            if found is None:
                found = _bad_unicode(v, path + (k,), depth + 1)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _bad_unicode(v, path + (i,), depth + 1)
            if found is not None:
                return found
    return None
