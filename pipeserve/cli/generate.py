"""``pipeserve generate``: a command-line client that streams a completion as it is generated.

Only the generated text goes to stdout (so it can be piped); the finish
reason, usage and timings go to stderr. A gRPC error becomes one line,
``error: <CODE>: <details>``, and exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import TextIO

import grpc

from pipeserve.cli.client_channel import open_channel
from pipeserve.v1 import generation_pb2, generation_pb2_grpc, models_pb2, models_pb2_grpc, types_pb2

LIST_MODELS_TIMEOUT_S = 10.0
GENERATION_TASK = "text-generation"


class ClientError(Exception):
    """A problem with what was asked, found before any request was sent."""


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
    try:
        prompt = read_prompt(args.prompt)
        channel = open_channel(
            args.target,
            api_key=args.api_key or os.environ.get("PIPESERVE_API_KEY"),
            tls_ca=args.tls_ca,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
        )
        with channel:
            model = args.model or default_model(channel)
            request = build_request(args, model, prompt)
            completion = complete(channel, request, stream=not args.no_stream, timeout=args.timeout)
    except (ClientError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        tls = any(value is not None for value in (args.tls_ca, args.tls_cert, args.tls_key))
        print(describe_rpc_error(exc, args.target, tls=tls), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): nothing more can be written, and Python
        # must not fail again flushing stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    print(completion.summary(), file=sys.stderr)
    return 0


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


def describe_rpc_error(error: grpc.RpcError, target: str, tls: bool = False) -> str:
    """One line for the error, and a hint when the usual cause is on the caller's side (tls: dialled with TLS)."""
    code = error.code()
    line = f"error: {code.name}: {error.details()}"
    details = (error.details() or "").lower()
    if code == grpc.StatusCode.UNAUTHENTICATED:
        line += "\n(pass --api-key, or set PIPESERVE_API_KEY, with a key the gateway's operator gave you)"
    elif code == grpc.StatusCode.UNAVAILABLE and ("ssl" in details or "handshake" in details or tls):
        line += (
            f"\n(is a gateway running at {target}? If so, check TLS: --tls-ca must have signed its certificate, "
            "and a gateway with mutual TLS wants --tls-cert and --tls-key)"
        )
    elif code == grpc.StatusCode.UNAVAILABLE and "connect" in details:
        line += f"\n(is a gateway running at {target}? start the stack with `pipeserve serve-all`, or pass --target)"
    return line
