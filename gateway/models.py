"""ModelsService: what is served (from the models file) and how its tokenizer sees text."""

from __future__ import annotations

from gateway.clients import TokenizerClient
from gateway.deadline import Deadline
from gateway.request_log import RequestLog
from gateway.validation import RequestLimits, validate_tokenize_request
from pipeserve.config import ModelSpec
from pipeserve.errors import grpc_errors
from pipeserve.v1 import models_pb2, models_pb2_grpc


class ModelsServicer(models_pb2_grpc.ModelsServiceServicer):
    def __init__(
        self,
        *,
        models: dict[str, ModelSpec],
        limits: RequestLimits,
        tokenizer: TokenizerClient,
        request_timeout_s: float,
    ):
        self._models = models
        self._limits = limits
        self._tokenizer = tokenizer
        self._request_timeout_s = request_timeout_s

    @grpc_errors
    async def ListModels(self, request: models_pb2.ListModelsRequest, context) -> models_pb2.ListModelsResponse:
        """Every served model, in the models file's order, as the tokenizer service describes it
        (only it holds the tokenizers and configs that know context length and chat template)."""
        deadline = Deadline.for_call(context, self._request_timeout_s)
        with RequestLog("ListModels", "-", served=self._models, deadline=deadline):
            return models_pb2.ListModelsResponse(models=await self._tokenizer.describe_models(deadline))

    @grpc_errors
    async def Tokenize(self, request: models_pb2.TokenizeRequest, context) -> models_pb2.TokenizeResponse:
        deadline = Deadline.for_call(context, self._request_timeout_s)
        with RequestLog("Tokenize", request.model, served=self._models, deadline=deadline):
            validate_tokenize_request(request, self._models, self._limits)
            return await self._tokenizer.tokenize(request, deadline)
