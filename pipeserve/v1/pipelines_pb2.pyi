from pipeserve.v1 import question_answering_pb2 as _question_answering_pb2
from pipeserve.v1 import table_question_answering_pb2 as _table_question_answering_pb2
from pipeserve.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClassificationFunction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLASSIFICATION_FUNCTION_UNSPECIFIED: _ClassVar[ClassificationFunction]
    CLASSIFICATION_FUNCTION_SIGMOID: _ClassVar[ClassificationFunction]
    CLASSIFICATION_FUNCTION_SOFTMAX: _ClassVar[ClassificationFunction]
    CLASSIFICATION_FUNCTION_NONE: _ClassVar[ClassificationFunction]

class AggregationStrategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGGREGATION_STRATEGY_UNSPECIFIED: _ClassVar[AggregationStrategy]
    AGGREGATION_STRATEGY_NONE: _ClassVar[AggregationStrategy]
    AGGREGATION_STRATEGY_SIMPLE: _ClassVar[AggregationStrategy]
    AGGREGATION_STRATEGY_FIRST: _ClassVar[AggregationStrategy]
    AGGREGATION_STRATEGY_AVERAGE: _ClassVar[AggregationStrategy]
    AGGREGATION_STRATEGY_MAX: _ClassVar[AggregationStrategy]
CLASSIFICATION_FUNCTION_UNSPECIFIED: ClassificationFunction
CLASSIFICATION_FUNCTION_SIGMOID: ClassificationFunction
CLASSIFICATION_FUNCTION_SOFTMAX: ClassificationFunction
CLASSIFICATION_FUNCTION_NONE: ClassificationFunction
AGGREGATION_STRATEGY_UNSPECIFIED: AggregationStrategy
AGGREGATION_STRATEGY_NONE: AggregationStrategy
AGGREGATION_STRATEGY_SIMPLE: AggregationStrategy
AGGREGATION_STRATEGY_FIRST: AggregationStrategy
AGGREGATION_STRATEGY_AVERAGE: AggregationStrategy
AGGREGATION_STRATEGY_MAX: AggregationStrategy

class PipelineRequest(_message.Message):
    __slots__ = ("model", "task", "text_classification", "token_classification", "fill_mask", "zero_shot_classification", "feature_extraction", "question_answering", "table_question_answering")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    TEXT_CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    FILL_MASK_FIELD_NUMBER: _ClassVar[int]
    ZERO_SHOT_CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    FEATURE_EXTRACTION_FIELD_NUMBER: _ClassVar[int]
    QUESTION_ANSWERING_FIELD_NUMBER: _ClassVar[int]
    TABLE_QUESTION_ANSWERING_FIELD_NUMBER: _ClassVar[int]
    model: str
    task: str
    text_classification: TextClassificationInput
    token_classification: TokenClassificationInput
    fill_mask: FillMaskInput
    zero_shot_classification: ZeroShotClassificationInput
    feature_extraction: FeatureExtractionInput
    question_answering: _question_answering_pb2.QuestionAnsweringInput
    table_question_answering: _table_question_answering_pb2.TableQuestionAnsweringInput
    def __init__(self, model: _Optional[str] = ..., task: _Optional[str] = ..., text_classification: _Optional[_Union[TextClassificationInput, _Mapping]] = ..., token_classification: _Optional[_Union[TokenClassificationInput, _Mapping]] = ..., fill_mask: _Optional[_Union[FillMaskInput, _Mapping]] = ..., zero_shot_classification: _Optional[_Union[ZeroShotClassificationInput, _Mapping]] = ..., feature_extraction: _Optional[_Union[FeatureExtractionInput, _Mapping]] = ..., question_answering: _Optional[_Union[_question_answering_pb2.QuestionAnsweringInput, _Mapping]] = ..., table_question_answering: _Optional[_Union[_table_question_answering_pb2.TableQuestionAnsweringInput, _Mapping]] = ...) -> None: ...

class PipelineResponse(_message.Message):
    __slots__ = ("model", "task", "text_classification", "token_classification", "fill_mask", "zero_shot_classification", "feature_extraction", "question_answering", "table_question_answering")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    TEXT_CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    FILL_MASK_FIELD_NUMBER: _ClassVar[int]
    ZERO_SHOT_CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    FEATURE_EXTRACTION_FIELD_NUMBER: _ClassVar[int]
    QUESTION_ANSWERING_FIELD_NUMBER: _ClassVar[int]
    TABLE_QUESTION_ANSWERING_FIELD_NUMBER: _ClassVar[int]
    model: str
    task: str
    text_classification: TextClassificationOutput
    token_classification: TokenClassificationOutput
    fill_mask: FillMaskOutput
    zero_shot_classification: ZeroShotClassificationOutput
    feature_extraction: FeatureExtractionOutput
    question_answering: _question_answering_pb2.QuestionAnsweringOutput
    table_question_answering: _table_question_answering_pb2.TableQuestionAnsweringOutput
    def __init__(self, model: _Optional[str] = ..., task: _Optional[str] = ..., text_classification: _Optional[_Union[TextClassificationOutput, _Mapping]] = ..., token_classification: _Optional[_Union[TokenClassificationOutput, _Mapping]] = ..., fill_mask: _Optional[_Union[FillMaskOutput, _Mapping]] = ..., zero_shot_classification: _Optional[_Union[ZeroShotClassificationOutput, _Mapping]] = ..., feature_extraction: _Optional[_Union[FeatureExtractionOutput, _Mapping]] = ..., question_answering: _Optional[_Union[_question_answering_pb2.QuestionAnsweringOutput, _Mapping]] = ..., table_question_answering: _Optional[_Union[_table_question_answering_pb2.TableQuestionAnsweringOutput, _Mapping]] = ...) -> None: ...

class LabelScore(_message.Message):
    __slots__ = ("label", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class TextClassificationItem(_message.Message):
    __slots__ = ("text", "text_pair")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TEXT_PAIR_FIELD_NUMBER: _ClassVar[int]
    text: str
    text_pair: str
    def __init__(self, text: _Optional[str] = ..., text_pair: _Optional[str] = ...) -> None: ...

class TextClassificationInput(_message.Message):
    __slots__ = ("items", "top_k", "function_to_apply", "truncation")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_TO_APPLY_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[TextClassificationItem]
    top_k: int
    function_to_apply: ClassificationFunction
    truncation: bool
    def __init__(self, items: _Optional[_Iterable[_Union[TextClassificationItem, _Mapping]]] = ..., top_k: _Optional[int] = ..., function_to_apply: _Optional[_Union[ClassificationFunction, str]] = ..., truncation: _Optional[bool] = ...) -> None: ...

class TextClassificationResult(_message.Message):
    __slots__ = ("labels",)
    LABELS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[LabelScore]
    def __init__(self, labels: _Optional[_Iterable[_Union[LabelScore, _Mapping]]] = ...) -> None: ...

class TextClassificationOutput(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TextClassificationResult]
    def __init__(self, results: _Optional[_Iterable[_Union[TextClassificationResult, _Mapping]]] = ...) -> None: ...

class LabelList(_message.Message):
    __slots__ = ("labels",)
    LABELS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, labels: _Optional[_Iterable[str]] = ...) -> None: ...

class TokenClassificationInput(_message.Message):
    __slots__ = ("texts", "aggregation_strategy", "ignore_labels", "stride")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    IGNORE_LABELS_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    aggregation_strategy: AggregationStrategy
    ignore_labels: LabelList
    stride: int
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., aggregation_strategy: _Optional[_Union[AggregationStrategy, str]] = ..., ignore_labels: _Optional[_Union[LabelList, _Mapping]] = ..., stride: _Optional[int] = ...) -> None: ...

class Entity(_message.Message):
    __slots__ = ("label", "score", "word", "start", "end", "index")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    WORD_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    word: str
    start: int
    end: int
    index: int
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ..., word: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., index: _Optional[int] = ...) -> None: ...

class TokenClassificationResult(_message.Message):
    __slots__ = ("entities",)
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    entities: _containers.RepeatedCompositeFieldContainer[Entity]
    def __init__(self, entities: _Optional[_Iterable[_Union[Entity, _Mapping]]] = ...) -> None: ...

class TokenClassificationOutput(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TokenClassificationResult]
    def __init__(self, results: _Optional[_Iterable[_Union[TokenClassificationResult, _Mapping]]] = ...) -> None: ...

class FillMaskInput(_message.Message):
    __slots__ = ("texts", "top_k", "targets")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    top_k: int
    targets: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., top_k: _Optional[int] = ..., targets: _Optional[_Iterable[str]] = ...) -> None: ...

class FillMaskCandidate(_message.Message):
    __slots__ = ("score", "token", "token_str", "sequence")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_STR_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    score: float
    token: int
    token_str: str
    sequence: str
    def __init__(self, score: _Optional[float] = ..., token: _Optional[int] = ..., token_str: _Optional[str] = ..., sequence: _Optional[str] = ...) -> None: ...

class MaskPredictions(_message.Message):
    __slots__ = ("candidates",)
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[FillMaskCandidate]
    def __init__(self, candidates: _Optional[_Iterable[_Union[FillMaskCandidate, _Mapping]]] = ...) -> None: ...

class FillMaskResult(_message.Message):
    __slots__ = ("masks",)
    MASKS_FIELD_NUMBER: _ClassVar[int]
    masks: _containers.RepeatedCompositeFieldContainer[MaskPredictions]
    def __init__(self, masks: _Optional[_Iterable[_Union[MaskPredictions, _Mapping]]] = ...) -> None: ...

class FillMaskOutput(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[FillMaskResult]
    def __init__(self, results: _Optional[_Iterable[_Union[FillMaskResult, _Mapping]]] = ...) -> None: ...

class ZeroShotClassificationInput(_message.Message):
    __slots__ = ("sequences", "candidate_labels", "hypothesis_template", "multi_label")
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_LABELS_FIELD_NUMBER: _ClassVar[int]
    HYPOTHESIS_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    MULTI_LABEL_FIELD_NUMBER: _ClassVar[int]
    sequences: _containers.RepeatedScalarFieldContainer[str]
    candidate_labels: _containers.RepeatedScalarFieldContainer[str]
    hypothesis_template: str
    multi_label: bool
    def __init__(self, sequences: _Optional[_Iterable[str]] = ..., candidate_labels: _Optional[_Iterable[str]] = ..., hypothesis_template: _Optional[str] = ..., multi_label: _Optional[bool] = ...) -> None: ...

class ZeroShotClassificationResult(_message.Message):
    __slots__ = ("sequence", "labels")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    sequence: str
    labels: _containers.RepeatedCompositeFieldContainer[LabelScore]
    def __init__(self, sequence: _Optional[str] = ..., labels: _Optional[_Iterable[_Union[LabelScore, _Mapping]]] = ...) -> None: ...

class ZeroShotClassificationOutput(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ZeroShotClassificationResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ZeroShotClassificationResult, _Mapping]]] = ...) -> None: ...

class FeatureExtractionInput(_message.Message):
    __slots__ = ("texts", "normalize", "truncation")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    normalize: bool
    truncation: bool
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., normalize: _Optional[bool] = ..., truncation: _Optional[bool] = ...) -> None: ...

class FeatureExtractionResult(_message.Message):
    __slots__ = ("token_embeddings", "sentence_embedding")
    TOKEN_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    SENTENCE_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    token_embeddings: _types_pb2.Tensor
    sentence_embedding: _types_pb2.Tensor
    def __init__(self, token_embeddings: _Optional[_Union[_types_pb2.Tensor, _Mapping]] = ..., sentence_embedding: _Optional[_Union[_types_pb2.Tensor, _Mapping]] = ...) -> None: ...

class FeatureExtractionOutput(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[FeatureExtractionResult]
    def __init__(self, results: _Optional[_Iterable[_Union[FeatureExtractionResult, _Mapping]]] = ...) -> None: ...
