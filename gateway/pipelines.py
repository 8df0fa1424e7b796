"""PipelineService: validate the envelope, then hand the whole request to the tokenizer service's RunTask.

Forward-only tasks take one round trip: the tokenizer service preprocesses,
enqueues, waits for the worker's outputs and postprocesses (see
tokenizer_service.run_task), so no per-request state lives here.
"""

from __future__ import annotations

import uuid

from opentelemetry import trace

from gateway.clients import TokenizerClient
from gateway.deadline import Deadline
from gateway.pipeline_validation import validate_pipeline_request
from gateway.request_log import RequestLog
from gateway.validation import RequestLimits
from pipeserve.config import ModelSpec
from pipeserve.errors import grpc_errors
from pipeserve.request_context import REQUEST_ID_METADATA, bind_request_id
from pipeserve.v1 import pipelines_pb2, pipelines_pb2_grpc


class PipelineServicer(pipelines_pb2_grpc.PipelineServiceServicer):
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
    async def Run(self, request: pipelines_pb2.PipelineRequest, context) -> pipelines_pb2.PipelineResponse:
        request_id = uuid.uuid4().hex
        bind_request_id(request_id)
        trace.get_current_span().set_attribute("pipeserve.request_id", request_id)
        deadline = Deadline.for_call(context, self._request_timeout_s)
        with RequestLog("Run", request.model, served=self._models, deadline=deadline):
            await context.send_initial_metadata(((REQUEST_ID_METADATA, request_id),))
            task = validate_pipeline_request(request, self._models, self._limits)
            return await self._tokenizer.run_task(request_id, task, request, deadline)
