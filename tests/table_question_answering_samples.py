"""Tables and queries for the table-question-answering tests, and answers in one comparable form.

Two tables of different sizes (one with an empty cell), asked several
queries each; ``served_answers`` and ``pipeline_answers`` turn the
service's answers and the pipeline's into the same tuples, so a test
compares answer string, coordinates, cells and aggregator at once.
"""

from __future__ import annotations

from pipeserve.v1 import table_question_answering_pb2 as tqa

REPOSITORIES = {
    "Repository": ["Transformers", "Datasets", "Tokenizers"],
    "Stars": ["36542", "4512", "3934"],
    "Contributors": ["651", "77", "34"],
    "Programming language": ["Python", "Python", "Rust, Python and NodeJS"],
}
REPOSITORY_QUERIES = [
    "How many stars does the transformers repository have?",
    "What is the total number of contributors?",
    "Which language is tokenizers written in?",
    "How many repositories use Python?",
]
CITIES = {
    "City": ["Paris", "Berlin", "Madrid", "Rome", "Lyon", "Hamburg", "Munich", "Marseille"],
    "Country": ["France", "Germany", "Spain", "Italy", "France", "Germany", "Germany", "France"],
    "Population": ["2148000", "3645000", "3223000", "2873000", "516000", "1841000", "1472000", ""],
    "Founded": ["3rd century BC", "1237", "9th century", "753 BC", "43 BC", "808", "1158", "600 BC"],
}
CITY_QUERIES = [
    "Which city has the largest population?",
    "What is the total population of cities in Germany?",
    "How many cities are in France?",
    "When was Rome founded?",
    "average population",
]


def table_input(table: dict[str, list[str]], queries: list[str], **options) -> tqa.TableQuestionAnsweringInput:
    columns = [tqa.TableColumn(header=header, cells=cells) for header, cells in table.items()]
    return tqa.TableQuestionAnsweringInput(columns=columns, queries=queries, **options)


def served_answers(output: tqa.TableQuestionAnsweringOutput) -> list[tuple]:
    """(answer, coordinates, cells, aggregator) per query, from the service's output."""
    return [
        (
            a.answer,
            [(c.row, c.column) for c in a.coordinates],
            list(a.cells),
            a.aggregator if a.HasField("aggregator") else None,
        )
        for a in output.results
    ]


def pipeline_answers(result: dict | list[dict]) -> list[tuple]:
    """The same tuples from transformers' pipeline, which returns a dict for one query and a list for several."""
    results = [result] if isinstance(result, dict) else result
    return [(r["answer"], list(r["coordinates"]), r["cells"], r.get("aggregator")) for r in results]
