"""The official `openai` Python client, unchanged, against the real server on loopback."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.serving import build_quick, running_server

MESSAGES = [{"role": "user", "content": "billy play some Daft Punk"}]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    return build_quick(tmp_path_factory.mktemp("quick"))


@pytest.fixture(scope="module")
def server(quick):
    with running_server([quick.task], [quick.model_dir], api_key="test-key") as srv:
        yield srv


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="test-key", max_retries=0, timeout=120)


def test_create_answers_with_the_task_schema(client, quick):
    completion = client.chat.completions.create(model="quick_pick", messages=MESSAGES)
    assert completion.object == "chat.completion" and completion.model == "quick_pick"
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    quick.task.validate_output(choice.message.content)
    assert completion.usage.completion_tokens > 0


def test_parse_gives_the_pydantic_model(client, quick):
    Pick = quick.task.output
    completion = client.chat.completions.parse(model="quick_pick", messages=MESSAGES, response_format=Pick)
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Pick)
    assert parsed.tool in ("music.play", "weather.forecast", "timer.set", "no_tool")


@pytest.mark.slow
def test_parse_with_toolpick_against_the_trained_tool_picker(trained_run, tool_picker):
    """`.parse(response_format=ToolPick)` gives a ToolPick whenever the trained model finishes its answer
    (what the local Predictor says); when it does not, the client is told so (finish_reason length)."""
    from schemabuild.predictor import Predictor

    ToolPick = tool_picker.output
    local = Predictor.from_model_dir(tool_picker, trained_run / "model", device="cpu").predict(MESSAGES[0]["content"])
    with running_server([tool_picker], [trained_run / "model"]) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        if local.output is None:
            with pytest.raises(openai.LengthFinishReasonError):
                client.chat.completions.parse(model="tool_picker", messages=MESSAGES, response_format=ToolPick)
            return
        completion = client.chat.completions.parse(model="tool_picker", messages=MESSAGES, response_format=ToolPick)
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, ToolPick) and parsed.model_dump() == local.output.model_dump()


def test_json_object_gives_a_json_object(client):
    completion = client.chat.completions.create(model="quick_pick", messages=MESSAGES, max_tokens=64,
                                                response_format={"type": "json_object"})
    content = completion.choices[0].message.content
    assert content.startswith("{")
    if completion.choices[0].finish_reason == "stop":  # an untrained model may run to max_tokens
        assert isinstance(json.loads(content), dict)


def test_json_schema_is_followed_strictly(client):
    schema = {"type": "object", "additionalProperties": False, "required": ["tool", "urgent", "tags"],
              "properties": {"tool": {"type": "string", "enum": ["music.play", "no_tool"]},
                             "urgent": {"type": "boolean"},
                             "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2}}}
    completion = client.chat.completions.create(
        model="quick_pick", messages=MESSAGES, max_tokens=64,
        response_format={"type": "json_schema", "json_schema": {"name": "pick", "schema": schema, "strict": True}})
    jsonschema.validate(json.loads(completion.choices[0].message.content), schema)


def test_streaming_gives_the_same_content_as_one_answer(client):
    whole = client.chat.completions.create(model="quick_pick", messages=MESSAGES).choices[0].message.content
    stream = client.chat.completions.create(model="quick_pick", messages=MESSAGES, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens > 0


def test_models_and_errors_map_to_the_client_exceptions(client, server):
    assert [m.id for m in client.models.list()] == ["quick_pick"]
    assert client.models.retrieve("quick_pick").id == "quick_pick"
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert err.value.code == "model_not_found" and err.value.param == "model"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="quick_pick", messages=MESSAGES, n=2)
    assert err.value.param == "n"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="quick_pick", messages=[])
    assert err.value.param == "messages"
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        wrong.chat.completions.create(model="quick_pick", messages=MESSAGES)
    assert err.value.code == "invalid_api_key"
