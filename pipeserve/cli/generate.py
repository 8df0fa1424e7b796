"""``pipeserve generate``: a command-line client that streams a completion as it is generated.

Only the generated text goes to stdout (so it can be piped); the finish
reason, usage and timings go to stderr. A gRPC error becomes one line,
``error: <CODE>: <details>``, and exit status 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import TextIO

import grpc

from pipeserve.cli.client_channel import ClientError, call_gateway
from pipeserve.v1 import generation_pb2, generation_pb2_grpc, models_pb2, models_pb2_grpc, types_pb2

LIST_MODELS_TIMEOUT_S = 10.0
GENERATION_TASK = "text-generation"


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    first_token_s: float | None
    total_s: float

    def summary(self) -> str:
        parts = [
            f"finish: {self.finish_reason}",
            f"tokens: {self.prompt_tokens} prompt + {self.completion_tokens} completion",
        ]
        if self.first_token_s is not None:
            parts.append(f"time to first token: {self.first_token_s * 1000:.0f} ms")
        if self.total_s > 0:
            parts.append(f"{self.completion_tokens / self.total_s:.1f} tokens/s ({self.total_s:.2f} s in all)")
        return "; ".join(parts)


def run(args: argparse.Namespace) -> int:
    def body(channel: grpc.Channel) -> str:
        prompt = read_prompt(args.prompt)
        model = args.model or default_model(channel)
        completion = complete(
            channel, build_request(args, model, prompt), stream=not args.no_stream, timeout=args.timeout
        )
        return completion.summary()

    return call_gateway(args, body)


def read_prompt(argument: str | None) -> str:
    """The prompt argument, or stdin when it is "-" or absent; never empty."""
    if argument in (None, "-"):
        if sys.stdin.isatty():
            print("reading the prompt from stdin; end it with Ctrl-D", file=sys.stderr)
        argument = sys.stdin.read()
    if not argument.strip():
        raise ClientError("the prompt is empty; pass it as an argument or on stdin")
    return argument


def default_model(channel: grpc.Channel) -> str:
    """The served text-generation model (the first one listed, if there are several)."""
    reply = models_pb2_grpc.ModelsServiceStub(channel).ListModels(
        models_pb2.ListModelsRequest(), timeout=LIST_MODELS_TIMEOUT_S
    )
    names = [model.name for model in reply.models if model.task == GENERATION_TASK]
    if not names:
        served = ", ".join(f"{m.name} ({m.task})" for m in reply.models) or "none"
        raise ClientError(f"the gateway serves no {GENERATION_TASK} model (served: {served})")
    return names[0]


def build_request(args: argparse.Namespace, model: str, prompt: str) -> generation_pb2.GenerateStreamRequest:
    request = generation_pb2.GenerateStreamRequest(model=model, parameters=generation_parameters(args))
    if args.chat or args.system is not None:
        messages = [types_pb2.ChatMessage(role="system", content=args.system)] if args.system is not None else []
        messages.append(types_pb2.ChatMessage(role="user", content=prompt))
        request.chat.CopyFrom(types_pb2.Chat(messages=messages, add_generation_prompt=True))
    else:
        request.prompt = prompt
    return request


def generation_parameters(args: argparse.Namespace) -> generation_pb2.GenerationParameters:
    """Only what was given is set: everything else stays the model's generation_config default."""
    parameters = generation_pb2.GenerationParameters(stop=args.stop or [])
    given = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "repetition_penalty": args.repetition_penalty,
        "seed": args.seed,
    }
    for field, value in given.items():
        if value is not None:
            setattr(parameters, field, value)
    do_sample = args.do_sample
    if do_sample is None and any(value is not None for value in (args.temperature, args.top_k, args.top_p)):
        do_sample = True
    if do_sample is not None:
        parameters.do_sample = do_sample
    return parameters


def complete(
    channel: grpc.Channel,
    request: generation_pb2.GenerateStreamRequest,
    *,
    stream: bool = True,
    timeout: float | None = None,
    out: TextIO | None = None,
) -> Completion:
    """Run one generation, writing its text to out (stdout) as it arrives, or at once with stream=False."""
    out = out or sys.stdout
    stub = generation_pb2_grpc.GenerationServiceStub(channel)
    started = time.perf_counter()
    if stream:
        completion = _stream(stub, request, timeout, out, started)
    else:
        completion = _unary(stub, request, timeout, out, started)
    if not completion.text.endswith("\n"):
        out.write("\n")
    out.flush()
    return completion


def _stream(stub, request, timeout, out: TextIO, started: float) -> Completion:
    call = stub.GenerateStream(request, timeout=timeout)
    pieces: list[str] = []
    first_token_s = None
    finish_reason = types_pb2.FINISH_REASON_UNSPECIFIED
    usage = None
    completion_tokens = 0
    try:
        for message in call:
            if first_token_s is None and (message.text or message.token_ids):
                first_token_s = time.perf_counter() - started
            if message.text:
                pieces.append(message.text)
                out.write(message.text)
                out.flush()
            completion_tokens += len(message.token_ids)
            if message.finish_reason:
                finish_reason = message.finish_reason
            if message.HasField("usage"):
                usage = message.usage
    except BaseException:
        call.cancel()
        raise
    return Completion(
        text="".join(pieces),
        finish_reason=_finish_reason_name(finish_reason),
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else completion_tokens,
        first_token_s=first_token_s,
        total_s=time.perf_counter() - started,
    )


def _unary(stub, request, timeout, out: TextIO, started: float) -> Completion:
    unary = generation_pb2.GenerateRequest(model=request.model, parameters=request.parameters)
    if request.HasField("chat"):
        unary.chat.CopyFrom(request.chat)
    else:
        unary.prompt = request.prompt
    reply = stub.Generate(unary, timeout=timeout)
    first = reply.completions[0] if reply.completions else generation_pb2.Completion()
    out.write(first.text)
    return Completion(
        text=first.text,
        finish_reason=_finish_reason_name(first.finish_reason),
        prompt_tokens=reply.usage.prompt_tokens,
        completion_tokens=reply.usage.completion_tokens,
        first_token_s=None,
        total_s=time.perf_counter() - started,
    )


def _finish_reason_name(value: int) -> str:
    return types_pb2.FinishReason.Name(value).removeprefix("FINISH_REASON_").lower()
