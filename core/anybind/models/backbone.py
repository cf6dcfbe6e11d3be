"""LM backbones: a causal language model, its tokenizer and chat template.

A backbone reference is either the name of a registered backbone (``smollm2``, from the
``anybind-smollm`` plugin) or ``PREFIX:REST`` for a backbone that claims a prefix; core
claims ``hf:`` for any local Hugging Face causal-LM directory::

    backbone = load_backbone("smollm2")
    backbone = load_backbone("hf:/models/my-llama")

The backbone is frozen; stages train projectors and LoRA adapters around it, and
:func:`apply_adapter` merges a trained adapter into it. Stages load it with transformers;
chat (``decoding=True``) loads a Llama with :mod:`anybind.models.llama` instead, which runs
the same weights without importing transformers' model classes.
"""

from __future__ import annotations

import inspect
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from anybind import plugins
from anybind.errors import CheckpointError, PluginError

#: Used when a local model's tokenizer has no chat template of its own.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def anybind_home() -> Path:
    """Where anybind caches converted weights: ``$ANYBIND_HOME``, default ``~/.cache/anybind``."""
    return Path(os.environ.get("ANYBIND_HOME") or Path.home() / ".cache" / "anybind").expanduser()


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    # bf16 only on GPUs: bf16 matmuls on CPU are hundreds of times slower than fp32.
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


@dataclass
class Backbone:
    """A frozen causal LM with its tokenizer, as a stage or chat model uses it."""

    reference: str
    model: Any  # a transformers causal LM, or anybind.models.llama's (decoding=True)
    tokenizer: Any
    quantization: str | None = None  # "int8" once quantized for CPU decoding (anybind.models.quantize)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the LM computes in: its first floating-point parameter's (int8 embeddings are
        buffers, and are looked up in fp32)."""
        return self.model.dtype

    @property
    def max_context(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)

    @property
    def stop_ids(self) -> list[int]:
        """Token ids that end an assistant turn: EOS and the template's end-of-turn marker."""
        ids = set()
        eos = self.model.generation_config.eos_token_id if self.model.generation_config else None
        for value in (eos, self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif value:
                ids.update(int(v) for v in value)
        for marker in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
            token_id = self.tokenizer.convert_tokens_to_ids(marker)
            if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id:
                ids.add(token_id)
        return sorted(ids)

    @property
    def vocab_size(self) -> int:
        """Rows of the LM's output layer: the id the first generative token gets."""
        head = self.model.get_output_embeddings()
        return int(head.out_features if head is not None else self.model.get_input_embeddings().num_embeddings)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids.to(self.device))

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Backbone":
        self.model.to(device=device, dtype=dtype)
        return self


def load_hf_causal_lm(reference: str, decoding: bool = False) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a local Hugging Face causal-LM directory (the ``hf:`` backbone).
    ``decoding``: for inference only, so a Llama :mod:`anybind.models.llama` reads is loaded by it."""
    path = Path(reference).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such model directory (hf:PATH takes a local Hugging Face causal-LM folder)")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: not a Hugging Face model directory (no config.json)")
    from anybind.models import llama

    if decoding and llama.readable(path):
        return llama.LlamaForCausalLM.from_pretrained(path, default_dtype(default_device())), _tokenizer(path, auto=False)
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}/config.json: cannot read it as a transformers config: {exc}") from None
    architectures = list(getattr(config, "architectures", None) or [])
    # The saved architecture says what the weights are (a BertModel is an encoder even though
    # transformers can bolt an LM head onto BERT); without one, go by the model type.
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures) if architectures \
        else config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if not causal or getattr(config, "is_encoder_decoder", False):
        architectures = ", ".join(architectures) or "no architectures listed"
        raise CheckpointError(
            f"{path}: a {config.model_type!r} model ({architectures}) is not a causal language model; "
            "hf:PATH needs one that transformers loads with AutoModelForCausalLM (llama, qwen2, gpt2, ...)"
        )
    tokenizer = _tokenizer(path)
    device = default_device()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=default_dtype(device))
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot load the causal LM weights: {exc}") from None
    return model, tokenizer


def _tokenizer(path: Path, auto: bool = True):
    """The fast tokenizer of ``path``; ``auto=False`` reads its tokenizer.json directly, without
    AutoTokenizer's look at the model's config (which imports torchvision; chat needs nothing else)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        tokenizer = (AutoTokenizer if auto else PreTrainedTokenizerFast).from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: has no usable tokenizer ({exc})") from None
    if not tokenizer.chat_template:
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return tokenizer


def load_backbone(reference: str, decoding: bool = False) -> Backbone:
    """Load a backbone by name (``smollm2``) or ``prefix:rest`` (``hf:/path``), frozen, in eval mode.
    ``decoding``: for inference only; a factory that takes a ``decoding`` keyword is told so
    (the built-in ones then load a Llama without transformers' model classes)."""
    if not reference:
        raise PluginError("no backbone given (e.g. smollm2 or hf:/path/to/causal-lm)")
    prefix, sep, rest = reference.partition(":")
    spec = None
    if sep and len(prefix) > 1:  # "C:\..." is a Windows drive, not a prefix
        spec = next((s for s in plugins.backbones().values() if s.prefix == prefix), None)
    if spec is None:
        spec = plugins.get_backbone(reference)
        rest = None
    from anybind.specs import resolve

    factory = resolve(spec.factory, what=f"factory of backbone {spec.name!r}")
    takes_decoding = "decoding" in inspect.signature(factory).parameters
    model, tokenizer = factory(rest, decoding=decoding) if takes_decoding and decoding else factory(rest)
    model = model.to(default_device()).eval().requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Backbone(reference, model, tokenizer)


def apply_adapter(backbone: Backbone, adapter_dir: Path, merge: bool = True) -> None:
    """Merge a saved LoRA adapter into ``backbone``'s weights, in place (generation then costs
    what the plain backbone costs). ``merge=False`` leaves it beside them, for
    :func:`~anybind.models.quantize.quantize_backbone` to merge one layer at a time."""
    if not (adapter_dir / "adapter_config.json").is_file():
        raise CheckpointError(f"{adapter_dir}: no adapter_config.json (an interrupted instruct stage?); "
                              "run anybind train instruct --retrain")
    from anybind.models import lora
    from anybind.models.llama import LlamaForCausalLM

    if isinstance(backbone.model, LlamaForCausalLM):
        if not lora.plain(adapter_dir):
            raise CheckpointError(f"{adapter_dir}: not a plain LoRA adapter; load the backbone without decoding=True "
                                  "(peft applies it to transformers' model)")
        lora.apply(backbone.model, adapter_dir, merge=merge)
        return
    from peft import PeftModel

    with quiet_peft():
        backbone.model = PeftModel.from_pretrained(backbone.model, str(adapter_dir))
        if merge:
            backbone.model = backbone.model.merge_and_unload()
    backbone.model.eval().requires_grad_(False)


@contextmanager
def quiet_peft():
    """peft probes ``model.is_gradient_checkpointing``, which transformers deprecates with a
    FutureWarning on every load; that one warning (not ours to fix) is silenced, nothing else."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
        yield
