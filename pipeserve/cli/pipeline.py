"""``pipeserve pipeline``: one PipelineService.Run call from the command line, printed as JSON.

The texts go where the task's input message keeps its texts (``items[].text``
for text-classification, ``sequences`` for zero-shot, ``queries`` for
table-question-answering, ``texts`` elsewhere);
``--options`` is the rest of that message in protobuf's JSON mapping, so
every option the API has is reachable without a flag per option. Tasks
whose items are not plain texts (question-answering) take them in
``--options`` only.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from pipeserve.cli.client_channel import ClientError, call_gateway
from pipeserve.tasks import FORWARD_TASKS, canonical_task, input_field
from pipeserve.tensors import from_tensor
from pipeserve.v1 import models_pb2, models_pb2_grpc, pipelines_pb2, pipelines_pb2_grpc, types_pb2

LIST_MODELS_TIMEOUT_S = 10.0

# Input field -> how the command line's texts fill that input message.
_TEXTS_INTO: dict[str, Callable[[Message, list[str]], None]] = {
    "text_classification": lambda m, texts: m.items.extend(pipelines_pb2.TextClassificationItem(text=t) for t in texts),
    "token_classification": lambda m, texts: m.texts.extend(texts),
    "fill_mask": lambda m, texts: m.texts.extend(texts),
    "zero_shot_classification": lambda m, texts: m.sequences.extend(texts),
    "feature_extraction": lambda m, texts: m.texts.extend(texts),
    "table_question_answering": lambda m, texts: m.queries.extend(texts),  # the table comes in --options
}


def run(args: argparse.Namespace) -> int:
    def body(channel: grpc.Channel) -> str:
        texts = read_texts(args.texts)
        task = args.task or model_task(channel, args.model)
        request = build_request(args.model, task, texts, args.options)
        reply = pipelines_pb2_grpc.PipelineServiceStub(channel).Run(request, timeout=args.timeout)
        print(json.dumps(output_json(reply), indent=2, ensure_ascii=False))
        return ""

    return call_gateway(args, body)


def read_texts(arguments: list[str]) -> list[str]:
    """The TEXT arguments, with "-" replaced by stdin's non-empty lines."""
    texts = []
    for argument in arguments:
        if argument == "-":
            if sys.stdin.isatty():
                print("reading texts from stdin, one per line; end with Ctrl-D", file=sys.stderr)
            texts.extend(line for line in sys.stdin.read().splitlines() if line.strip())
        else:
            texts.append(argument)
    return texts


def model_task(channel: grpc.Channel, model: str) -> str:
    """The task the gateway lists for the model (the gateway itself answers NOT_FOUND for an unknown one)."""
    reply = models_pb2_grpc.ModelsServiceStub(channel).ListModels(
        models_pb2.ListModelsRequest(), timeout=LIST_MODELS_TIMEOUT_S
    )
    tasks = {info.name: info.task for info in reply.models}
    return tasks.get(model, "")


def build_request(model: str, task: str, texts: list[str], options: str) -> pipelines_pb2.PipelineRequest:
    """The request, or ClientError saying what to change; an unknown model or task is left to the gateway."""
    canonical = canonical_task(task) if task else None
    if canonical is None or canonical not in FORWARD_TASKS:
        if canonical is not None:
            raise ClientError(f"{model!r} is a {canonical} model: use `pipeserve generate --model {model}`")
        return pipelines_pb2.PipelineRequest(model=model, task=task)  # the gateway names what it serves
    field = input_field(canonical)
    request = pipelines_pb2.PipelineRequest(model=model, task=task)
    message = getattr(request, field)
    message.SetInParent()  # the input is set even when nothing in it is (the gateway then says what is missing)
    try:
        json_format.Parse(options, message)
    except json_format.ParseError as exc:
        raise ClientError(f"--options is not a valid {message.DESCRIPTOR.name} in JSON: {exc}") from None
    if texts:
        fill = _TEXTS_INTO.get(field)
        if fill is None:
            raise ClientError(f"{canonical} takes no plain texts: give its items in --options (see --help)")
        fill(message, texts)
    return request


def output_json(reply: pipelines_pb2.PipelineResponse) -> object:
    """The task's output, one entry per input item, packed tensors unpacked into nested lists."""
    return [_to_json(result) for result in getattr(reply, reply.WhichOneof("output")).results]


def _to_json(message: Message) -> dict:
    # Every field, zeros included (an entity at offset 0 has start 0), as the pipeline's dicts have them.
    data = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    for descriptor, value in message.ListFields():
        if descriptor.message_type is types_pb2.Tensor.DESCRIPTOR:
            data[descriptor.name] = from_tensor(value).tolist()
    return {field.name: data[field.name] for field in message.DESCRIPTOR.fields if field.name in data}
