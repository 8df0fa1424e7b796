from pipeserve.internal.v1 import queue_pb2 as _queue_pb2
from pipeserve.v1 import generation_pb2 as _generation_pb2
from pipeserve.v1 import models_pb2 as _models_pb2
from pipeserve.v1 import pipelines_pb2 as _pipelines_pb2
from pipeserve.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PreprocessRequest(_message.Message):
    __slots__ = ("model", "prompt", "chat", "parameters", "task", "src_lang", "tgt_lang")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    SRC_LANG_FIELD_NUMBER: _ClassVar[int]
    TGT_LANG_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: str
    chat: _types_pb2.Chat
    parameters: _generation_pb2.GenerationParameters
    task: str
    src_lang: str
    tgt_lang: str
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[str] = ..., chat: _Optional[_Union[_types_pb2.Chat, _Mapping]] = ..., parameters: _Optional[_Union[_generation_pb2.GenerationParameters, _Mapping]] = ..., task: _Optional[str] = ..., src_lang: _Optional[str] = ..., tgt_lang: _Optional[str] = ...) -> None: ...

class PreprocessResponse(_message.Message):
    __slots__ = ("prompt_token_ids", "sampling", "decode")
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    DECODE_FIELD_NUMBER: _ClassVar[int]
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: _queue_pb2.SamplingParams
    decode: DecodeOptions
    def __init__(self, prompt_token_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[_queue_pb2.SamplingParams, _Mapping]] = ..., decode: _Optional[_Union[DecodeOptions, _Mapping]] = ...) -> None: ...

class DecodeOptions(_message.Message):
    __slots__ = ("skip_special_tokens", "stop", "return_full_text", "num_sequences")
    SKIP_SPECIAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    RETURN_FULL_TEXT_FIELD_NUMBER: _ClassVar[int]
    NUM_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    skip_special_tokens: bool
    stop: _containers.RepeatedScalarFieldContainer[str]
    return_full_text: bool
    num_sequences: int
    def __init__(self, skip_special_tokens: _Optional[bool] = ..., stop: _Optional[_Iterable[str]] = ..., return_full_text: _Optional[bool] = ..., num_sequences: _Optional[int] = ...) -> None: ...

class TokenizeRequest(_message.Message):
    __slots__ = ("model", "prompt", "chat")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: str
    chat: _types_pb2.Chat
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[str] = ..., chat: _Optional[_Union[_types_pb2.Chat, _Mapping]] = ...) -> None: ...

class TokenizeResponse(_message.Message):
    __slots__ = ("token_ids", "tokens", "text")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    tokens: _containers.RepeatedScalarFieldContainer[str]
    text: str
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., tokens: _Optional[_Iterable[str]] = ..., text: _Optional[str] = ...) -> None: ...

class StreamTextRequest(_message.Message):
    __slots__ = ("request_id", "model", "prompt_token_ids", "decode", "resume_after_messages")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    DECODE_FIELD_NUMBER: _ClassVar[int]
    RESUME_AFTER_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    decode: DecodeOptions
    resume_after_messages: int
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., decode: _Optional[_Union[DecodeOptions, _Mapping]] = ..., resume_after_messages: _Optional[int] = ...) -> None: ...

class StreamTextResponse(_message.Message):
    __slots__ = ("index", "text", "token_ids", "finish_reason", "usage")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    finish_reason: _types_pb2.FinishReason
    usage: _types_pb2.Usage
    def __init__(self, index: _Optional[int] = ..., text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., finish_reason: _Optional[_Union[_types_pb2.FinishReason, str]] = ..., usage: _Optional[_Union[_types_pb2.Usage, _Mapping]] = ...) -> None: ...

class DescribeModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[_models_pb2.ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[_models_pb2.ModelInfo, _Mapping]]] = ...) -> None: ...

class RunTaskRequest(_message.Message):
    __slots__ = ("request_id", "task", "request")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    task: str
    request: _pipelines_pb2.PipelineRequest
    def __init__(self, request_id: _Optional[str] = ..., task: _Optional[str] = ..., request: _Optional[_Union[_pipelines_pb2.PipelineRequest, _Mapping]] = ...) -> None: ...

class RunTaskResponse(_message.Message):
    __slots__ = ("response",)
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    response: _pipelines_pb2.PipelineResponse
    def __init__(self, response: _Optional[_Union[_pipelines_pb2.PipelineResponse, _Mapping]] = ...) -> None: ...
