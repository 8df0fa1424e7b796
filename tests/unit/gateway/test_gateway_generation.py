"""GenerationService end to end inside one process: fake tokenizer service, real Redis."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from gateway_fakes import MODEL, PROMPT_TOKEN_IDS, eventually, heartbeat, stream_message

from gateway import clients as generation_clients
from pipeserve.queue import producer
from pipeserve.queue.protocol import ALL_SEQUENCES, PAYLOAD_FIELD, decode_work_item
from pipeserve.v1 import generation_pb2, types_pb2


def stream_request(**fields) -> generation_pb2.GenerateStreamRequest:
    fields.setdefault("model", MODEL)
    fields.setdefault("prompt", "Say hello")
    return generation_pb2.GenerateStreamRequest(**fields)


def unary_request(**fields) -> generation_pb2.GenerateRequest:
    fields.setdefault("model", MODEL)
    fields.setdefault("prompt", "Say hello")
    return generation_pb2.GenerateRequest(**fields)


async def queued_items(redis, keys, model=MODEL):
    entries = await redis.xrange(keys.request_stream(model))
    return [decode_work_item(fields[PAYLOAD_FIELD]) for _entry_id, fields in entries]


async def cancel_flags(redis, keys, request_id) -> set[bytes]:
    return await redis.smembers(keys.cancel(request_id))


async def test_stream_relays_deltas_in_order_with_request_id(gateway):
    call = gateway.generation.GenerateStream(stream_request(), timeout=10)
    metadata = dict(await call.initial_metadata())
    messages = [message async for message in call]

    assert len(metadata["x-request-id"]) == 32
    assert [m.sequence_number for m in messages] == [0, 1, 2]
    assert "".join(m.text for m in messages) == "Hello!"
    assert [list(m.token_ids) for m in messages] == [[1], [2], [3]]
    assert [m.finish_reason for m in messages] == [0, 0, types_pb2.FINISH_REASON_EOS]
    assert not messages[0].HasField("usage")
    assert messages[-1].usage == types_pb2.Usage(prompt_tokens=3, completion_tokens=3)


async def test_stream_text_gets_the_preprocessed_request(gateway):
    call = gateway.generation.GenerateStream(stream_request(), timeout=10)
    request_id = dict(await call.initial_metadata())["x-request-id"]
    [message async for message in call]

    (preprocess,) = gateway.tokenizer.preprocess_requests
    assert preprocess.model == MODEL and preprocess.prompt == "Say hello"
    (stream,) = gateway.tokenizer.stream_requests
    assert stream.request_id == request_id
    assert stream.model == MODEL
    assert list(stream.prompt_token_ids) == PROMPT_TOKEN_IDS
    assert stream.decode == gateway.tokenizer.preprocess_reply.decode


async def test_generate_aggregates_each_sequence(gateway):
    gateway.tokenizer.stream_messages = [
        stream_message(index=0, text="a", token_ids=[1]),
        stream_message(index=1, text="x", token_ids=[5]),
        stream_message(index=1, text="y", token_ids=[6], finish_reason=types_pb2.FINISH_REASON_STOP),
        stream_message(index=0, text="b", token_ids=[2], finish_reason=types_pb2.FINISH_REASON_LENGTH),
        stream_message(usage=types_pb2.Usage(prompt_tokens=3, completion_tokens=4)),
    ]
    parameters = generation_pb2.GenerationParameters(do_sample=True, num_return_sequences=2)
    call = gateway.generation.Generate(unary_request(parameters=parameters), timeout=10)
    response = await call

    assert "x-request-id" in dict(await call.initial_metadata())
    assert response.model == MODEL
    assert [(c.index, c.text, list(c.token_ids), c.finish_reason) for c in response.completions] == [
        (0, "ab", [1, 2], types_pb2.FINISH_REASON_LENGTH),
        (1, "xy", [5, 6], types_pb2.FINISH_REASON_STOP),
    ]
    assert response.usage == types_pb2.Usage(prompt_tokens=3, completion_tokens=4)


async def test_chat_input_reaches_preprocess(gateway):
    chat = types_pb2.Chat(messages=[types_pb2.ChatMessage(role="user", content="hi")])
    await gateway.generation.Generate(unary_request(prompt=None, chat=chat), timeout=10)
    (preprocess,) = gateway.tokenizer.preprocess_requests
    assert preprocess.WhichOneof("input") == "chat" and preprocess.chat == chat


async def test_work_item_lands_on_the_model_stream(gateway, redis, keys):
    before_ms = time.time() * 1000
    call = gateway.generation.GenerateStream(stream_request(), timeout=30)
    request_id = dict(await call.initial_metadata())["x-request-id"]
    [message async for message in call]

    (item,) = await queued_items(redis, keys)
    assert item.request_id == request_id
    assert item.model == MODEL
    assert list(item.prompt_token_ids) == PROMPT_TOKEN_IDS
    assert item.sampling == gateway.tokenizer.preprocess_reply.sampling
    assert before_ms <= item.enqueued_unix_ms <= time.time() * 1000
    # The client's 30 s deadline, not the server default.
    assert before_ms + 28_000 < item.deadline_unix_ms <= before_ms + 31_000


async def test_deadline_defaults_to_request_timeout(start_gateway, redis, keys):
    await heartbeat(redis, keys)
    gateway = await start_gateway(request_timeout_s=120)
    before_ms = time.time() * 1000
    await gateway.generation.Generate(unary_request())

    (item,) = await queued_items(redis, keys)
    assert before_ms + 119_000 < item.deadline_unix_ms <= before_ms + 121_000


async def test_completed_request_raises_no_cancel_flag(gateway, redis, keys):
    call = gateway.generation.GenerateStream(stream_request(), timeout=10)
    request_id = dict(await call.initial_metadata())["x-request-id"]
    [message async for message in call]
    assert await call.code() == grpc.StatusCode.OK
    assert not await redis.exists(keys.cancel(request_id))


async def test_full_queue_is_resource_exhausted_and_enqueues_nothing(start_gateway, redis, keys):
    await heartbeat(redis, keys)
    gateway = await start_gateway(max_queue_depth=1)
    await redis.xadd(keys.request_stream(MODEL), {PAYLOAD_FIELD: b"someone else's request"})

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway.generation.Generate(unary_request(), timeout=10)

    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit 1" in raised.value.details()
    assert await redis.xlen(keys.request_stream(MODEL)) == 1
    assert gateway.tokenizer.stream_requests == []


@pytest.mark.parametrize("last_heartbeat_age_s", [None, 60.0], ids=["never", "stale"])
async def test_no_live_worker_is_unavailable(start_gateway, redis, keys, last_heartbeat_age_s):
    if last_heartbeat_age_s is not None:
        await heartbeat(redis, keys, at=time.time() - last_heartbeat_age_s)
    gateway = await start_gateway(worker_liveness_s=15)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway.generation.Generate(unary_request(), timeout=10)

    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no model worker" in raised.value.details()
    assert not await redis.exists(keys.request_stream(MODEL))
    assert gateway.tokenizer.stream_requests == []


async def test_liveness_check_can_be_disabled(start_gateway, redis, keys):
    gateway = await start_gateway(worker_liveness_s=0)
    response = await gateway.generation.Generate(unary_request(), timeout=10)
    assert response.completions[0].text == "Hello!"
    assert len(await queued_items(redis, keys)) == 1


async def test_client_cancel_raises_the_cancel_flag_and_drops_the_reply_stream(gateway, redis, keys):
    gateway.tokenizer.stream_hangs = True
    call = gateway.generation.GenerateStream(stream_request(), timeout=30)
    request_id = dict(await call.initial_metadata())["x-request-id"]
    await redis.xadd(keys.reply_stream(request_id), {"p": b""})  # what the worker published so far
    for _ in gateway.tokenizer.stream_messages:
        await call.read()

    call.cancel()

    async def flag_raised():
        return await cancel_flags(redis, keys, request_id) == {ALL_SEQUENCES.encode()}

    await eventually(flag_raised)
    assert 0 < await redis.ttl(keys.cancel(request_id)) <= gateway.settings.key_ttl_s

    async def reply_stream_gone():  # nobody resumes a request its client left
        return not await redis.exists(keys.reply_stream(request_id))

    await eventually(reply_stream_gone)
    # The gateway also stopped reading from the tokenizer service.
    await asyncio.wait_for(gateway.tokenizer.stream_cancelled.wait(), 5)


async def test_deadline_is_deadline_exceeded_and_raises_the_cancel_flag(gateway, redis, keys):
    gateway.tokenizer.stream_messages = []
    gateway.tokenizer.stream_hangs = True
    call = gateway.generation.GenerateStream(stream_request(), timeout=0.5)
    request_id = dict(await call.initial_metadata())["x-request-id"]

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        [message async for message in call]

    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    async def flag_raised():
        return ALL_SEQUENCES.encode() in await cancel_flags(redis, keys, request_id)

    await eventually(flag_raised)


async def test_server_default_deadline_gives_deadline_exceeded(start_gateway, redis, keys):
    await heartbeat(redis, keys)
    gateway = await start_gateway(request_timeout_s=0.5)
    gateway.tokenizer.stream_messages = []
    gateway.tokenizer.stream_hangs = True
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway.generation.Generate(unary_request())

    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "deadline (0.5 s) passed during generation" in raised.value.details()
    (item,) = await queued_items(redis, keys)

    async def flag_raised():
        return ALL_SEQUENCES.encode() in await cancel_flags(redis, keys, item.request_id)

    await eventually(flag_raised)


async def test_downstream_invalid_argument_passes_through_before_enqueue(gateway, redis, keys):
    message = "prompt (3000 tokens) + max_new_tokens (100) exceeds the context length of tiny-llama (2048 tokens)"
    gateway.tokenizer.preprocess_error = (grpc.StatusCode.INVALID_ARGUMENT, message)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway.generation.Generate(unary_request(), timeout=10)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == message
    assert not await redis.exists(keys.request_stream(MODEL))


async def test_stream_error_after_enqueue_passes_through_and_cancels(gateway, redis, keys):
    gateway.tokenizer.stream_messages = [stream_message(text="Hel", token_ids=[1])]
    gateway.tokenizer.stream_error = (grpc.StatusCode.INVALID_ARGUMENT, "token id 99999 is outside the vocabulary")
    call = gateway.generation.GenerateStream(stream_request(), timeout=10)
    request_id = dict(await call.initial_metadata())["x-request-id"]

    first = await call.read()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()

    assert first.text == "Hel"
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "token id 99999 is outside the vocabulary"
    assert await cancel_flags(redis, keys, request_id) == {ALL_SEQUENCES.encode()}


async def test_unknown_model_is_not_found_and_lists_served_models(gateway):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway.generation.Generate(unary_request(model="gpt-9"), timeout=10)

    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'gpt-9'" in raised.value.details() and MODEL in raised.value.details()
    assert gateway.tokenizer.preprocess_requests == []


async def test_invalid_request_is_rejected_before_any_downstream_call(gateway, redis, keys):
    parameters = generation_pb2.GenerationParameters(max_new_tokens=-1)
    call = gateway.generation.GenerateStream(stream_request(parameters=parameters), timeout=10)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        [message async for message in call]

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "parameters.max_new_tokens is -1" in raised.value.details()
    assert gateway.tokenizer.preprocess_requests == []
    assert not await redis.exists(keys.request_stream(MODEL))


async def test_redis_down_is_unavailable_promptly(start_gateway):
    # Nothing listens on port 1: connection refused at once.
    gateway = await start_gateway(redis_url="redis://127.0.0.1:1/0")
    started = time.monotonic()

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway.generation.Generate(unary_request(), timeout=30)

    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "Redis" in raised.value.details()
    assert time.monotonic() - started < 10
    assert gateway.tokenizer.stream_requests == []


async def test_wedged_redis_is_unavailable_without_waiting_for_the_deadline(start_gateway, monkeypatch):
    """A Redis that accepts connections but never answers must not hold the call until its deadline."""

    async def accept_and_stay_silent(reader, writer):
        await reader.read()
        writer.close()

    silent = await asyncio.start_server(accept_and_stay_silent, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    monkeypatch.setattr(producer, "ENQUEUE_TIMEOUT_S", 0.3)
    gateway = await start_gateway(redis_url=f"redis://127.0.0.1:{port}/0")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await gateway.generation.Generate(unary_request(), timeout=30)
    finally:
        silent.close()

    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "did not answer within 0.3 s" in raised.value.details()


async def test_tokenizer_down_is_unavailable(start_gateway, redis, keys):
    await heartbeat(redis, keys)
    gateway = await start_gateway(tokenizer_target="127.0.0.1:1")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway.generation.Generate(unary_request(), timeout=30)

    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "tokenizer service (127.0.0.1:1)" in raised.value.details()
    assert not await redis.exists(keys.request_stream(MODEL))


async def test_oversize_request_is_refused_by_grpc(start_gateway):
    gateway = await start_gateway(max_message_bytes=1024)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway.generation.Generate(unary_request(prompt="x" * 4096), timeout=10)

    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert gateway.tokenizer.preprocess_requests == []


async def test_preprocess_meeting_a_dead_tokenizer_is_retried(gateway):
    gateway.tokenizer.preprocess_unavailable = 2

    response = await gateway.generation.Generate(unary_request(), timeout=10)

    assert response.completions[0].text == "Hello!"
    assert len(gateway.tokenizer.preprocess_requests) == 3


async def test_a_stream_broken_by_a_dying_tokenizer_resumes_without_gap_or_repeat(gateway, redis, keys):
    gateway.tokenizer.stream_breaks = [1, 0, 1]
    call = gateway.generation.GenerateStream(stream_request(), timeout=10)
    request_id = dict(await call.initial_metadata())["x-request-id"]

    messages = [message async for message in call]

    assert "".join(m.text for m in messages) == "Hello!"
    assert [m.sequence_number for m in messages] == [0, 1, 2]
    assert [r.resume_after_messages for r in gateway.tokenizer.stream_requests] == [0, 1, 1, 2]
    assert not await redis.exists(keys.cancel(request_id)), "a resumed request runs on"


async def test_a_tokenizer_service_that_stays_down_ends_the_stream_with_unavailable(gateway, redis, keys):
    gateway.tokenizer.stream_breaks = [1, 0, 0]
    call = gateway.generation.GenerateStream(stream_request(), timeout=10)
    request_id = dict(await call.initial_metadata())["x-request-id"]

    first = await call.read()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()

    assert first.text == "Hel"
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(gateway.tokenizer.stream_requests) == generation_clients.TOKENIZER_ATTEMPTS
    assert await cancel_flags(redis, keys, request_id) == {ALL_SEQUENCES.encode()}
