"""Loading a served model the way transformers users do: ``from_pretrained`` on a local dir or hub id."""

from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass

import torch

from pipeserve.config import ModelSpec
from pipeserve.tasks import MODEL_CLASSES

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A model cannot be loaded as configured; the message says what to change."""


@dataclass(frozen=True)
class LoadedModel:
    name: str
    model: torch.nn.Module
    input_vocab_size: int
    """Prompt token ids must be below this (rows of the input embedding)."""
    output_vocab_size: int
    """Width of the logits."""
    task: str
    """The pipeline task it was loaded for (which head: pipeserve.tasks.MODEL_CLASSES)."""
    pad_token_id: int
    """What forward-only batches are right-padded with (attention_mask 0 there)."""
    context_length: int | None
    """Most positions the model handles (prompt + generated); None when its config sets no limit."""
    device: torch.device
    """Where inputs go (the input embedding's device, also with a multi-device map)."""


def _dtype(spec: ModelSpec) -> str | torch.dtype:
    if spec.dtype == "auto":
        return "auto"
    dtype = getattr(torch, spec.dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise ModelLoadError(
            f"model {spec.name!r}: dtype {spec.dtype!r} is not a torch dtype; "
            "use e.g. float32, bfloat16, float16 or auto"
        )
    return dtype


def _quantization_config(spec: ModelSpec):
    if spec.quantization is None:
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError(
            f"model {spec.name!r} asks for {spec.quantization} quantization, which needs bitsandbytes: "
            "pip install 'pipeserve[gpu]' (on a machine with a CUDA GPU)"
        )
    if not torch.cuda.is_available():
        raise ModelLoadError(
            f"model {spec.name!r} asks for {spec.quantization} quantization (bitsandbytes), which needs a CUDA GPU "
            "and this machine has none; remove `quantization` from the models file or run this worker on a GPU node"
        )
    from transformers import BitsAndBytesConfig

    if spec.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True)


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load weights with the spec's revision, dtype, device_map and quantization, ready for inference.

    The AutoModel class is the task's (pipeserve.tasks.MODEL_CLASSES), as
    pipeline(task) picks it: a fill-mask model loads with its masked-LM head,
    a feature-extraction model as the bare encoder.
    """
    import transformers

    class_name = MODEL_CLASSES.get(spec.task)
    if class_name is None:
        raise ModelLoadError(
            f"model {spec.name!r} has task {spec.task!r}, which model workers do not serve; "
            f"served tasks: {', '.join(MODEL_CLASSES)}"
        )
    auto_class = getattr(transformers, class_name)
    quantization_config = _quantization_config(spec)
    # bitsandbytes places weights as it loads them, so it needs a device map.
    device_map = spec.device_map or ("auto" if quantization_config is not None else None)
    started = time.monotonic()
    try:
        model = auto_class.from_pretrained(
            spec.path,
            revision=spec.revision,
            dtype=_dtype(spec),
            device_map=device_map,
            trust_remote_code=spec.trust_remote_code,
            quantization_config=quantization_config,
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model {spec.name!r} could not be loaded from {spec.path!r}: {exc}") from exc
    model.eval()
    model.requires_grad_(False)
    text_config = model.config.get_text_config(decoder=True)
    output_embeddings = model.get_output_embeddings()
    loaded = LoadedModel(
        name=spec.name,
        model=model,
        input_vocab_size=model.get_input_embeddings().num_embeddings,
        output_vocab_size=output_embeddings.out_features if output_embeddings is not None else text_config.vocab_size,
        task=spec.task,
        pad_token_id=_pad_token_id(text_config),
        context_length=getattr(text_config, "max_position_embeddings", None),
        device=model.get_input_embeddings().weight.device,
    )
    parameters = sum(p.numel() for p in model.parameters())
    log.info(
        "loaded model %r (%s, %.1fM parameters, %s) from %s onto %s in %.1f s",
        spec.name,
        type(model).__name__,
        parameters / 1e6,
        model.dtype,
        spec.path,
        _placement(model),
        time.monotonic() - started,
    )
    return loaded


def _placement(model) -> str:
    device_map = getattr(model, "hf_device_map", None)
    if device_map:
        return ", ".join(sorted({str(device) for device in device_map.values()}))
    return str(model.device)


def _pad_token_id(config) -> int:
    """The config's pad token, else 0: padded positions are masked out, so any valid id does."""
    pad = getattr(config, "pad_token_id", None)
    return pad if isinstance(pad, int) and pad >= 0 else 0
