"""Text generation's preprocess step, as TextGenerationPipeline.preprocess and generate() do it.

A prompt is tokenized with the tokenizer's own special tokens (the pipeline
leaves ``add_special_tokens`` at the tokenizer's default); a chat is
rendered with the chat template and tokenized without adding any (the
template writes them). Loading reads the tokenizer and configs only, never
weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jinja2 import TemplateError
from transformers import AutoConfig, AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase

from pipeserve.config import ModelSpec
from pipeserve.errors import InvalidArgument
from pipeserve.internal.v1 import tokenizer_pb2
from pipeserve.v1 import types_pb2
from tokenizer_service.detokenizer import DecodeTraits
from tokenizer_service.tasks import seq2seq
from tokenizer_service.tasks.generation_defaults import resolve_sampling

TASK = "text-generation"
# Config fields that name the longest sequence a model takes, across architectures.
CONTEXT_LENGTH_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


@dataclass(frozen=True)
class TextGenerationModel:
    """A served text-generation model as the tokenizer side sees it."""

    spec: ModelSpec
    tokenizer: PreTrainedTokenizerBase
    generation_config: GenerationConfig
    # None when the model's config names no limit.
    context_length: int | None
    # Size of the model's output layer: the ids generation can produce.
    vocab_size: int
    decode_traits: DecodeTraits
    # Encoder-decoder models (T5, BART) serve the seq2seq tasks instead (tokenizer_service.tasks.seq2seq).
    is_encoder_decoder: bool = False
    task_specific_params: dict = field(default_factory=dict)
    # config.prefix: put before every source text when the task's parameters name no prefix of their own.
    prefix: str = ""
    # Most source tokens an encoder-decoder model takes (longer texts are cut); None: no limit.
    source_length: int | None = None

    @classmethod
    def load(cls, spec: ModelSpec) -> TextGenerationModel:
        options = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
        tokenizer = AutoTokenizer.from_pretrained(spec.path, **options)
        config = AutoConfig.from_pretrained(spec.path, **options)
        try:
            generation_config = GenerationConfig.from_pretrained(spec.path, revision=spec.revision)
        except OSError:
            # No generation_config.json: transformers derives one from the model config.
            generation_config = GenerationConfig.from_model_config(config)
        text_config = config.get_text_config()
        return cls(
            spec=spec,
            tokenizer=tokenizer,
            generation_config=generation_config,
            context_length=_context_length(text_config),
            vocab_size=getattr(text_config, "vocab_size", None) or len(tokenizer),
            decode_traits=DecodeTraits.of(tokenizer),
            is_encoder_decoder=bool(getattr(config, "is_encoder_decoder", False)),
            task_specific_params=getattr(config, "task_specific_params", None) or {},
            prefix=getattr(config, "prefix", None) or "",
            source_length=seq2seq.source_length(tokenizer, config),
        )

    @property
    def name(self) -> str:
        return self.spec.name

    def tokenize(self, request: tokenizer_pb2.TokenizeRequest) -> tokenizer_pb2.TokenizeResponse:
        token_ids, text = self._encode_input(request)
        return tokenizer_pb2.TokenizeResponse(
            token_ids=token_ids, tokens=self.tokenizer.convert_ids_to_tokens(token_ids), text=text
        )

    def preprocess(self, request: tokenizer_pb2.PreprocessRequest) -> tokenizer_pb2.PreprocessResponse:
        task = seq2seq.resolve_task(request.task, is_encoder_decoder=self.is_encoder_decoder, model=self.name)
        if task != TASK:
            return seq2seq.preprocess_seq2seq(self, request, task)
        token_ids, _text = self._encode_input(request)
        if not token_ids:
            raise InvalidArgument("the prompt gives no tokens; send a non-empty prompt")
        if self.context_length is not None and len(token_ids) >= self.context_length:
            raise InvalidArgument(
                f"the prompt has {len(token_ids)} tokens, but model {self.name!r} has a context of "
                f"{self.context_length} tokens (prompt and generation together); shorten the prompt"
            )
        params = request.parameters
        if any(not stop for stop in params.stop):
            raise InvalidArgument("stop strings must not be empty")
        sampling = resolve_sampling(
            params,
            self.generation_config,
            prompt_length=len(token_ids),
            context_length=self.context_length,
            vocab_size=self.vocab_size,
            tokenizer_eos_id=self.tokenizer.eos_token_id,
        )
        decode = tokenizer_pb2.DecodeOptions(
            skip_special_tokens=params.skip_special_tokens if params.HasField("skip_special_tokens") else True,
            stop=params.stop,
            return_full_text=params.return_full_text,
            num_sequences=sampling.num_return_sequences,
        )
        return tokenizer_pb2.PreprocessResponse(prompt_token_ids=token_ids, sampling=sampling, decode=decode)

    def _encode_input(self, request) -> tuple[list[int], str]:
        """Token ids of the request's prompt or chat, and the text they encode."""
        kind = request.WhichOneof("input")
        if kind == "prompt":
            return self.tokenizer(request.prompt, verbose=False)["input_ids"], request.prompt
        if kind == "chat":
            text = self._render_chat(request.chat)
            return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], text
        raise InvalidArgument("the request has no input: set either prompt or chat")

    def _render_chat(self, chat: types_pb2.Chat) -> str:
        """The chat template's text, with the pipeline's choice of generation prompt.

        As in TextGenerationPipeline, a chat ending with an assistant message
        is continued (prefill) unless add_generation_prompt says otherwise.
        """
        if not chat.messages:
            raise InvalidArgument("chat.messages is empty; send at least one message")
        if self.tokenizer.chat_template is None:
            raise InvalidArgument(
                f"model {self.name!r} has no chat template, so it cannot take chat input; send a prompt"
            )
        messages = [{"role": message.role, "content": message.content} for message in chat.messages]
        ends_with_assistant = messages[-1]["role"] == "assistant"
        add_generation_prompt = (
            chat.add_generation_prompt if chat.HasField("add_generation_prompt") else not ends_with_assistant
        )
        try:
            return self.tokenizer.apply_chat_template(
                messages,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=ends_with_assistant and not add_generation_prompt,
                tokenize=False,
            )
        except (TemplateError, ValueError) as exc:
            raise InvalidArgument(f"model {self.name!r}'s chat template rejected the chat: {exc}") from exc


def _context_length(config) -> int | None:
    for name in CONTEXT_LENGTH_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
