"""ModelsService: the models file's view of what is served, and Tokenize through the tokenizer service."""

from __future__ import annotations

import grpc
import pytest
from gateway_fakes import MODEL, OTHER_MODEL

from pipeserve.v1 import models_pb2, types_pb2


async def test_list_models_relays_the_tokenizer_services_description(gateway):
    response = await gateway.models.ListModels(models_pb2.ListModelsRequest(), timeout=10)
    assert [(m.name, m.task, m.max_context_length, m.has_chat_template) for m in response.models] == [
        (MODEL, "text-generation", 2048, True),
        (OTHER_MODEL, "text-classification", 0, False),
    ]


async def test_tokenize_relays_the_tokenizer_service(gateway):
    response = await gateway.models.Tokenize(models_pb2.TokenizeRequest(model=MODEL, prompt="hello"), timeout=10)

    assert list(response.token_ids) == [7, 8]
    assert list(response.tokens) == ["he", "llo"]
    assert response.text == "hello"
    (sent,) = gateway.tokenizer.tokenize_requests
    assert sent.model == MODEL and sent.prompt == "hello"


async def test_tokenize_passes_chat_input(gateway):
    chat = types_pb2.Chat(messages=[types_pb2.ChatMessage(role="user", content="hi")], add_generation_prompt=False)
    await gateway.models.Tokenize(models_pb2.TokenizeRequest(model=MODEL, chat=chat), timeout=10)
    (sent,) = gateway.tokenizer.tokenize_requests
    assert sent.chat == chat


@pytest.mark.parametrize(
    ("request_fields", "code", "fragment"),
    [
        ({"model": "nope", "prompt": "x"}, grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
        ({"model": MODEL}, grpc.StatusCode.INVALID_ARGUMENT, "no input"),
        ({"model": MODEL, "prompt": ""}, grpc.StatusCode.INVALID_ARGUMENT, "prompt is empty"),
        ({"model": "", "prompt": "x"}, grpc.StatusCode.INVALID_ARGUMENT, "model is empty"),
    ],
)
async def test_tokenize_rejects_bad_requests_without_calling_the_tokenizer(gateway, request_fields, code, fragment):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway.models.Tokenize(models_pb2.TokenizeRequest(**request_fields), timeout=10)

    assert raised.value.code() == code
    assert fragment in raised.value.details()
    assert gateway.tokenizer.tokenize_requests == []
