"""summarization, translation, text2text-generation: the transformers 4.x Text2TextGenerationPipeline family.

transformers 5 dropped these pipelines; their preprocess is ours. As in
4.x, the task picks an entry of the model config's ``task_specific_params``
(t5-small has ``summarization`` and ``translation_en_to_de``...): its
``prefix`` goes before the text ("summarize: ..."), and its generation
options (t5-small's: num_beams, length_penalty, no_repeat_ngram_size,
min_length, max_length, early_stopping) override the model's generation
config; a request's own parameters override both. The text is tokenized
with the tokenizer's special tokens and cut to the model's maximum length
(the 4.x pipelines' ``truncation=True``). The encoder-decoder engine (or,
with num_beams > 1, generate's beam search) then generates from these ids,
and the text streamed back is the decoded output alone, never a
continuation of the prompt.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from pipeserve.errors import InvalidArgument
from pipeserve.internal.v1 import tokenizer_pb2
from pipeserve.tasks import SUMMARIZATION, TEXT2TEXT_GENERATION, TEXT_GENERATION, TRANSLATION
from tokenizer_service.tasks.generation_defaults import resolve_sampling

if TYPE_CHECKING:
    from tokenizer_service.tasks.text_generation import TextGenerationModel

SEQ2SEQ_TASKS = (TEXT2TEXT_GENERATION, SUMMARIZATION, TRANSLATION)
GENERATION_TASKS = (TEXT_GENERATION, *SEQ2SEQ_TASKS)
# A model_max_length at least this large is transformers' "no limit" placeholder (int(1e30)), not a real length.
NO_LENGTH_LIMIT = 10**9


def resolve_task(requested: str, *, is_encoder_decoder: bool, model: str) -> str:
    """The generation task a request runs: its own (checked against the model's kind), else the model's default."""
    if not requested:
        return TEXT2TEXT_GENERATION if is_encoder_decoder else TEXT_GENERATION
    base = TRANSLATION if requested.startswith(f"{TRANSLATION}_") else requested
    if base not in GENERATION_TASKS:
        raise InvalidArgument(
            f"task {requested!r} is not a generation task; GenerateRequest.task is one of "
            f"{', '.join(GENERATION_TASKS)} or translation_xx_to_yy (other tasks run through PipelineService.Run)"
        )
    if base == TRANSLATION and requested != TRANSLATION and not _is_language_pair(requested):
        raise InvalidArgument(f"invalid translation task {requested!r}; use the translation_xx_to_yy format")
    if is_encoder_decoder and base == TEXT_GENERATION:
        raise InvalidArgument(
            f"model {model!r} is an encoder-decoder model: it does text2text-generation, summarization or "
            "translation, not text-generation"
        )
    if not is_encoder_decoder and base != TEXT_GENERATION:
        raise InvalidArgument(
            f"model {model!r} is a decoder-only model: it does text-generation; {requested} needs an "
            "encoder-decoder model (T5, BART...)"
        )
    return requested


def _is_language_pair(task: str) -> bool:
    parts = task.split("_")
    return len(parts) == 4 and parts[2] == "to" and all(parts[1:])


def task_parameters(task: str, task_specific_params: dict, *, src_lang: str, tgt_lang: str, model: str) -> dict:
    """The model's ``task_specific_params`` entry for the task, as the 4.x pipeline chose it ({} when none)."""
    if task == TRANSLATION:
        translations = sorted(key for key in task_specific_params if key.startswith(f"{TRANSLATION}_"))
        if src_lang or tgt_lang:
            if not (src_lang and tgt_lang):
                raise InvalidArgument("translation needs both src_lang and tgt_lang, or neither")
            task = f"{TRANSLATION}_{src_lang}_to_{tgt_lang}"
            if task not in task_specific_params:
                known = ", ".join(key.removeprefix(f"{TRANSLATION}_") for key in translations) or "none"
                raise InvalidArgument(
                    f"model {model!r} has no parameters for {task}; the language pairs it names: {known}"
                )
        elif translations:
            # pipeline("translation") took the config's first translation_xx_to_yy entry.
            task = translations[0]
    elif src_lang or tgt_lang:
        raise InvalidArgument(f"src_lang and tgt_lang are for task translation, not {task}")
    return dict(task_specific_params.get(task) or {})


def preprocess_seq2seq(
    model: TextGenerationModel, request: tokenizer_pb2.PreprocessRequest, task: str
) -> tokenizer_pb2.PreprocessResponse:
    """Prefix, tokenize and truncate the source text; resolve the options against the task's generation config."""
    if request.WhichOneof("input") != "prompt":
        raise InvalidArgument(f"{task} takes the text to work on as prompt; chat input is for text-generation models")
    params = task_parameters(
        task, model.task_specific_params, src_lang=request.src_lang, tgt_lang=request.tgt_lang, model=model.name
    )
    prefix = params.pop("prefix", None) or model.prefix
    source_ids = encode_source(model.tokenizer, prefix + request.prompt, model.source_length)
    parameters = request.parameters
    if parameters.return_full_text:
        raise InvalidArgument(f"return_full_text is for text-generation; {task} returns the generated text only")
    if any(not stop for stop in parameters.stop):
        raise InvalidArgument("stop strings must not be empty")
    generation_config = model.generation_config
    if params:
        generation_config = copy.deepcopy(generation_config)
        generation_config.update(**params)
    sampling = resolve_sampling(
        parameters,
        generation_config,
        # The decoder starts from one token (decoder_start_token_id), and its length is what max_length counts.
        prompt_length=1,
        context_length=model.context_length,
        vocab_size=model.vocab_size,
        tokenizer_eos_id=model.tokenizer.eos_token_id,
    )
    decode = tokenizer_pb2.DecodeOptions(
        skip_special_tokens=parameters.skip_special_tokens if parameters.HasField("skip_special_tokens") else True,
        stop=parameters.stop,
        num_sequences=sampling.num_return_sequences,
    )
    return tokenizer_pb2.PreprocessResponse(prompt_token_ids=source_ids, sampling=sampling, decode=decode)


def encode_source(tokenizer, text: str, max_length: int | None) -> list[int]:
    """Token ids with the tokenizer's special tokens, cut to max_length as ``truncation=True`` cuts them.

    Truncating through the tokenizer call would switch the shared backend
    tokenizer's truncation on and off under concurrent requests; cutting the
    encoding itself changes nothing shared.
    """
    ids = tokenizer(text, verbose=False)["input_ids"]
    if max_length is None or len(ids) <= max_length:
        return ids
    if not tokenizer.is_fast:
        raise InvalidArgument(f"the text is {len(ids)} tokens long; this model takes at most {max_length}")
    backend = tokenizer.backend_tokenizer
    encoding = backend.encode(text, add_special_tokens=False)
    encoding.truncate(max_length - tokenizer.num_special_tokens_to_add())
    return backend.post_process(encoding).ids


def source_length(tokenizer, config) -> int | None:
    """Most source tokens the model takes: the tokenizer's model_max_length, else the config's positions."""
    if tokenizer.model_max_length < NO_LENGTH_LIMIT:
        return int(tokenizer.model_max_length)
    value = getattr(config, "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None
