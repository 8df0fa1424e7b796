"""Text generation through the real processes: gateway → tokenizer → Redis → model worker."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from pipeserve.local_models import TINY_LLAMA
from pipeserve.v1 import generation_pb2, models_pb2, types_pb2

from .conftest import greedy_reference, stream_request, unary_request

FINISH = types_pb2.FinishReason


def collect(responses):
    """Concatenate a stream per index; also check sequence numbers are 0,1,2,... without gaps."""
    texts, ids, finish, usage = {}, {}, {}, None
    for expected, response in enumerate(responses):
        assert response.sequence_number == expected
        texts[response.index] = texts.get(response.index, "") + response.text
        ids.setdefault(response.index, []).extend(response.token_ids)
        if response.finish_reason:
            finish[response.index] = response.finish_reason
        if response.HasField("usage"):
            usage = response.usage
    return texts, ids, finish, usage


def tokenize(models_api, prompt: str) -> list[int]:
    return list(models_api.Tokenize(models_pb2.TokenizeRequest(model=TINY_LLAMA, prompt=prompt)).token_ids)


def test_stream_and_unary_agree_and_match_generate(generation, models_api, reference):
    prompt = "import os\nimport sys\n\ndef main(argv):"
    stream = generation.GenerateStream(stream_request(prompt=prompt, max_new_tokens=40, ignore_eos=True), timeout=60)
    texts, ids, finish, usage = collect(stream)
    unary = generation.Generate(unary_request(prompt=prompt, max_new_tokens=40, ignore_eos=True), timeout=60)

    expected_ids = greedy_reference(reference, tokenize(models_api, prompt), 40)
    assert ids[0] == expected_ids
    assert list(unary.completions[0].token_ids) == expected_ids
    assert unary.completions[0].text == texts[0]
    _model, tokenizer = reference
    assert texts[0] == tokenizer.decode(expected_ids, skip_special_tokens=True)
    assert finish[0] == unary.completions[0].finish_reason == FINISH.FINISH_REASON_LENGTH
    assert usage.completion_tokens == unary.usage.completion_tokens == 40
    assert usage.prompt_tokens == unary.usage.prompt_tokens == len(tokenize(models_api, prompt))


def test_greedy_parity_with_generate_under_concurrency(generation, models_api, reference):
    prompts = [
        "def f(x):",
        "class Path(object):\n    '''A filesystem path.'''\n\n    def __init__(self, *parts):",
        "你好，世界！",
        "for i in range(10):\n    print(i)\n",
        "x",
        "import collections\nimport functools\nimport itertools\nimport operator\n" * 6,
        "emoji 🙂 and 🚀 go to",
        "return self._data[key] if key in self._data else default",
    ]
    lengths = [5, 48, 17, 33, 64, 24, 40, 9]

    def run(args):
        prompt, n = args
        return collect(
            generation.GenerateStream(stream_request(prompt=prompt, max_new_tokens=n, ignore_eos=True), timeout=120)
        )

    with ThreadPoolExecutor(len(prompts)) as pool:
        results = list(pool.map(run, zip(prompts, lengths)))
    for prompt, n, (texts, ids, finish, _usage) in zip(prompts, lengths, results):
        assert ids[0] == greedy_reference(reference, tokenize(models_api, prompt), n), prompt
        assert finish[0] == FINISH.FINISH_REASON_LENGTH


def test_request_joining_busy_batch_gets_first_token_before_others_finish(generation):
    long_done = []

    def long_request():
        collect(
            generation.GenerateStream(
                stream_request(prompt="def long():", max_new_tokens=400, ignore_eos=True), timeout=120
            )
        )
        long_done.append(time.monotonic())

    runners = [threading.Thread(target=long_request) for _ in range(3)]
    for runner in runners:
        runner.start()
    time.sleep(0.5)  # let the long requests start decoding; the assertion below does not depend on it
    first_token_at = None
    for response in generation.GenerateStream(
        stream_request(prompt="x = ", max_new_tokens=4, ignore_eos=True), timeout=60
    ):
        if response.token_ids and first_token_at is None:
            first_token_at = time.monotonic()
    for runner in runners:
        runner.join()
    assert first_token_at is not None
    assert first_token_at < min(long_done), "the new request waited for the running batch to finish"


def test_stop_string_cuts_text_and_reports_stop(generation, models_api, reference):
    prompt = "def main():\n    return"
    free = generation.Generate(unary_request(prompt=prompt, max_new_tokens=60, ignore_eos=True), timeout=60)
    full_text = free.completions[0].text
    # A stop string taken from the middle of the free-running text, so it straddles tokens.
    stop = full_text[len(full_text) // 2 : len(full_text) // 2 + 3]
    assert len(stop) == 3 and stop.strip(), f"unusable stop candidate from {full_text!r}"
    expected = full_text[: full_text.index(stop)]

    stopped = generation.Generate(
        unary_request(prompt=prompt, max_new_tokens=60, ignore_eos=True, stop=[stop]), timeout=60
    )
    assert stopped.completions[0].text == expected
    assert stopped.completions[0].finish_reason == FINISH.FINISH_REASON_STOP
    assert stopped.usage.completion_tokens < 60

    texts, _ids, finish, _usage = collect(
        generation.GenerateStream(
            stream_request(prompt=prompt, max_new_tokens=60, ignore_eos=True, stop=[stop]), timeout=60
        )
    )
    assert texts[0] == expected and finish[0] == FINISH.FINISH_REASON_STOP


def test_multibyte_text_streams_without_replacement_characters(generation, models_api, reference):
    _model, tokenizer = reference
    for prompt in ["你好，世界！今天天气", "emoji 🙂 😀 🚀 🎉", "東京は日本の首都です。"]:
        deltas = []
        ids = []
        for response in generation.GenerateStream(
            stream_request(prompt=prompt, max_new_tokens=48, ignore_eos=True), timeout=60
        ):
            deltas.append(response.text)
            ids.extend(response.token_ids)
        prompt_ids = tokenize(models_api, prompt)
        full = tokenizer.decode(prompt_ids + ids, skip_special_tokens=True)
        expected = full[len(tokenizer.decode(prompt_ids, skip_special_tokens=True)) :]
        assert "".join(deltas) == expected
        if "\ufffd" not in expected:
            assert all("\ufffd" not in delta for delta in deltas)


def test_chat_messages_use_the_chat_template(generation, models_api, reference):
    _model, tokenizer = reference
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hi 🙂"}]
    chat = types_pb2.Chat(messages=[types_pb2.ChatMessage(**m) for m in messages])
    tokenized = models_api.Tokenize(models_pb2.TokenizeRequest(model=TINY_LLAMA, chat=chat))
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert tokenized.text == rendered
    assert list(tokenized.token_ids) == tokenizer(rendered, add_special_tokens=False).input_ids

    response = generation.Generate(
        generation_pb2.GenerateRequest(
            model=TINY_LLAMA,
            chat=chat,
            parameters=generation_pb2.GenerationParameters(max_new_tokens=20, ignore_eos=True),
        ),
        timeout=60,
    )
    assert list(response.completions[0].token_ids) == greedy_reference(reference, list(tokenized.token_ids), 20)


def test_eos_finishes_with_eos_reason(generation, reference):
    model, _tokenizer = reference
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    # Force an early EOS by declaring the first generated token to be end-of-sequence.
    first = (
        generation.Generate(unary_request(prompt="def f():", max_new_tokens=1), timeout=60).completions[0].token_ids[0]
    )
    response = generation.Generate(
        unary_request(prompt="def f():", max_new_tokens=30, eos_token_id=[first]), timeout=60
    )
    assert response.completions[0].finish_reason == FINISH.FINISH_REASON_EOS
    assert list(response.completions[0].token_ids) == [first], "the EOS token is part of the output, as in generate"


def test_sampling_with_seed_is_reproducible_and_returns_n_sequences(generation):
    params = dict(
        max_new_tokens=16,
        do_sample=True,
        temperature=0.9,
        top_k=50,
        top_p=0.9,
        seed=1234,
        num_return_sequences=3,
        ignore_eos=True,
    )
    first = generation.Generate(unary_request(**params), timeout=60)
    second = generation.Generate(unary_request(**params), timeout=60)
    assert [c.index for c in first.completions] == [0, 1, 2]
    assert [list(c.token_ids) for c in first.completions] == [list(c.token_ids) for c in second.completions]
    assert all(len(c.token_ids) == 16 for c in first.completions)
    assert len({tuple(c.token_ids) for c in first.completions}) > 1, "n sequences should differ when sampling"
    assert first.usage.completion_tokens == 48


def test_return_full_text_prepends_prompt(generation):
    prompt = "def main():"
    plain = generation.Generate(unary_request(prompt=prompt, max_new_tokens=8, ignore_eos=True), timeout=60)
    full = generation.Generate(
        unary_request(prompt=prompt, max_new_tokens=8, ignore_eos=True, return_full_text=True), timeout=60
    )
    assert full.completions[0].text == prompt + plain.completions[0].text


def test_list_models(models_api):
    models = models_api.ListModels(models_pb2.ListModelsRequest()).models
    assert [m.name for m in models] == [TINY_LLAMA]
    assert models[0].task == "text-generation"


def test_client_cancel_frees_the_slot(stack, generation):
    """A cancelled stream's work item is acknowledged long before max_new_tokens would be reached."""
    client = stack.redis()
    call = generation.GenerateStream(
        stream_request(prompt="def spin():", max_new_tokens=2000, ignore_eos=True), timeout=120
    )
    next(call)  # generation has started
    call.cancel()
    deadline = time.monotonic() + 10
    while client.xlen(stack.keys.request_stream(TINY_LLAMA)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.xlen(stack.keys.request_stream(TINY_LLAMA)) == 0, "the cancelled request still holds its slot"


def test_client_deadline_gives_deadline_exceeded(stack, generation):
    try:
        collect(
            generation.GenerateStream(
                stream_request(prompt="def spin():", max_new_tokens=2000, ignore_eos=True), timeout=1.0
            )
        )
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    else:
        raise AssertionError("a 2000-token generation finished within a 1 s deadline")
    client = stack.redis()
    deadline = time.monotonic() + 10
    while client.xlen(stack.keys.request_stream(TINY_LLAMA)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.xlen(stack.keys.request_stream(TINY_LLAMA)) == 0


def test_response_carries_request_id(generation):
    _response, call = generation.Generate.with_call(unary_request(max_new_tokens=2), timeout=60)
    metadata = dict(call.initial_metadata())
    assert len(metadata.get("x-request-id", "")) >= 16


def test_finished_request_leaves_no_keys(stack, generation):
    _response, call = generation.Generate.with_call(unary_request(max_new_tokens=6, stop=["\n"]), timeout=60)
    request_id = dict(call.initial_metadata())["x-request-id"]
    client = stack.redis()
    assert not client.exists(stack.keys.reply_stream(request_id)), "the reply stream outlived its request"
    per_request = [stack.keys.reply_stream("*"), stack.keys.cancel("*")]
    for pattern in per_request:
        for key in client.scan_iter(match=pattern):
            assert client.ttl(key) != -1, f"{key!r} has no TTL: it would leak if its request were abandoned"
