"""table-question-answering: TableQuestionAnsweringPipeline's pre/post-processing for TAPAS models.

Each query, with the table, is one pipeline input and so one model row: the
pipeline tokenizes a list of queries one by one anyway and only pads them to
one length, so the rows are the same, and the worker runs all of a request's
queries in one padded forward (the pipeline's batch_inference). Conversational
inference (``sequential=True``, SQA), which feeds each query's answer into the
next query's token types and so needs a forward per query, is not served.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from transformers.pipelines import TableQuestionAnsweringPipeline

from pipeserve.tasks import TABLE_QUESTION_ANSWERING
from pipeserve.v1 import table_question_answering_pb2 as tqa_pb2
from tokenizer_service.tasks.forward import ForwardModel, RowOutputs
from tokenizer_service.tasks.transformers_pipeline import TransformersPipelineTask

LOGITS = "logits"
AGGREGATION_LOGITS = "logits_aggregation"

TRUNCATIONS = {
    tqa_pb2.TABLE_TRUNCATION_DROP_ROWS_TO_FIT: "drop_rows_to_fit",
    tqa_pb2.TABLE_TRUNCATION_DO_NOT_TRUNCATE: "do_not_truncate",
}


class TableQuestionAnswering(TransformersPipelineTask):
    task = TABLE_QUESTION_ANSWERING
    input_field = "table_question_answering"
    token_outputs = (LOGITS,)
    pipeline_class = TableQuestionAnsweringPipeline

    def __init__(self, model: ForwardModel):
        super().__init__(model)
        # The aggregation head's logits cross the queue only when the pipeline reads them (the model has labels).
        self.output_names = (LOGITS, AGGREGATION_LOGITS) if self.pipeline.aggregate else (LOGITS,)

    def inputs(self, input_msg: tqa_pb2.TableQuestionAnsweringInput) -> list[Any]:
        # Built by position, not from a header -> cells dict, so that two columns may share a header.
        columns = input_msg.columns
        table = pd.DataFrame({index: list(column.cells) for index, column in enumerate(columns)})
        table = table.set_axis([column.header for column in columns], axis=1)
        return [{"table": table, "query": query} for query in input_msg.queries]

    def parameters(self, input_msg: tqa_pb2.TableQuestionAnsweringInput) -> dict[str, Any]:
        truncation = TRUNCATIONS.get(input_msg.truncation)
        return {} if truncation is None else {"truncation": truncation}

    def model_outputs(self, chunk: dict[str, Any], outputs: RowOutputs) -> dict[str, Any]:
        """What the pipeline's ``_forward`` returns: the model inputs, the table and the forward's outputs."""
        merged = super().model_outputs(chunk, outputs)
        return {
            "model_inputs": {name: merged[name] for name in self._model_inputs},
            "table": chunk["table"],
            "outputs": tuple(merged[name] for name in self.output_names),
        }

    def to_output(self, input_msg, results: list[dict[str, Any]]) -> tqa_pb2.TableQuestionAnsweringOutput:
        output = tqa_pb2.TableQuestionAnsweringOutput()
        for result in results:
            answer = output.results.add(
                answer=result["answer"],
                coordinates=[tqa_pb2.TableCoordinate(row=row, column=column) for row, column in result["coordinates"]],
                cells=result["cells"],
            )
            if "aggregator" in result:
                answer.aggregator = result["aggregator"]
        return output
