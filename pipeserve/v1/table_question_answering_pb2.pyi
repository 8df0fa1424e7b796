from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TableTruncation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TABLE_TRUNCATION_UNSPECIFIED: _ClassVar[TableTruncation]
    TABLE_TRUNCATION_DROP_ROWS_TO_FIT: _ClassVar[TableTruncation]
    TABLE_TRUNCATION_DO_NOT_TRUNCATE: _ClassVar[TableTruncation]
TABLE_TRUNCATION_UNSPECIFIED: TableTruncation
TABLE_TRUNCATION_DROP_ROWS_TO_FIT: TableTruncation
TABLE_TRUNCATION_DO_NOT_TRUNCATE: TableTruncation

class TableColumn(_message.Message):
    __slots__ = ("header", "cells")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CELLS_FIELD_NUMBER: _ClassVar[int]
    header: str
    cells: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, header: _Optional[str] = ..., cells: _Optional[_Iterable[str]] = ...) -> None: ...

class TableQuestionAnsweringInput(_message.Message):
    __slots__ = ("columns", "queries", "truncation")
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    columns: _containers.RepeatedCompositeFieldContainer[TableColumn]
    queries: _containers.RepeatedScalarFieldContainer[str]
    truncation: TableTruncation
    def __init__(self, columns: _Optional[_Iterable[_Union[TableColumn, _Mapping]]] = ..., queries: _Optional[_Iterable[str]] = ..., truncation: _Optional[_Union[TableTruncation, str]] = ...) -> None: ...

class TableCoordinate(_message.Message):
    __slots__ = ("row", "column")
    ROW_FIELD_NUMBER: _ClassVar[int]
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    row: int
    column: int
    def __init__(self, row: _Optional[int] = ..., column: _Optional[int] = ...) -> None: ...

class TableAnswer(_message.Message):
    __slots__ = ("answer", "coordinates", "cells", "aggregator")
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    COORDINATES_FIELD_NUMBER: _ClassVar[int]
    CELLS_FIELD_NUMBER: _ClassVar[int]
    AGGREGATOR_FIELD_NUMBER: _ClassVar[int]
    answer: str
    coordinates: _containers.RepeatedCompositeFieldContainer[TableCoordinate]
    cells: _containers.RepeatedScalarFieldContainer[str]
    aggregator: str
    def __init__(self, answer: _Optional[str] = ..., coordinates: _Optional[_Iterable[_Union[TableCoordinate, _Mapping]]] = ..., cells: _Optional[_Iterable[str]] = ..., aggregator: _Optional[str] = ...) -> None: ...

class TableQuestionAnsweringOutput(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TableAnswer]
    def __init__(self, results: _Optional[_Iterable[_Union[TableAnswer, _Mapping]]] = ...) -> None: ...
