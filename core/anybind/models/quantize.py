"""int8 weights for decoding on the CPU.

Decoding one token at a time is bound by reading the weights from memory: SmolLM2-135M's fp32
weights are 540 MB, which caps fp32 decode near 20 tokens/s on a 2-core machine. Every linear
layer of the LM (the output head included) becomes a dynamic int8 one (``torch.ao``: int8
weights with a scale per output channel, fused int8 matmuls by FBGEMM, a quarter of the bytes),
:class:`Int8Layer`, with two guards for the LM's outlier activations: each layer's outlier input
channels, found in one calibration pass over plain requests, are multiplied in fp32 beside the
int8 product (LLM.int8()'s decomposition), and each token's input is quantized on its own scale.
The input embeddings are int8 too, a scale per row (:class:`Int8Embedding`), looked up in fp32,
so soft tokens and generative tokens are written into the sequence as before. Opt-in
(``--int8``); ``bench/chat_speed.py`` measures speed and memory, and bench/RESULTS.md ("int8:
outlier channels in fp32") how close its logits and chat answers are to fp32's. For inference
only: training always sees the fp32 backbone.
"""

from __future__ import annotations

import ctypes
import inspect
import mmap
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from anybind.errors import CheckpointError

QUANTIZATIONS = ("int8",)
#: An input channel whose largest activation in calibration is this many times the layer's median
#: channel's is multiplied in fp32 beside the int8 product (LLM.int8()'s decomposition): one shared
#: scale would crush every other channel (SmolLM2's attention sink puts up to 3,065 into one of an
#: MLP output projection's 1,536 inputs, whose median peak is 0.4-4). At 5, 0-12% of a layer's
#: channels stay fp32 (bench/RESULTS.md, "int8: outlier channels in fp32").
OUTLIER_RATIO = 5.0
#: ...but at most this share of a layer's input channels (the rest stay int8)
MAX_OUTLIER_SHARE = 0.125
#: Calibration: this many plain requests, read as one conversation (about 200 tokens for SmolLM2)
CALIBRATION_TURNS = 16


def quantize_backbone(backbone, kind: str = "int8", *, calibration: Sequence[str]) -> None:
    """Quantize ``backbone``'s LM in place, one layer at a time: one forward pass over
    ``calibration`` (plain requests, read as one conversation), in which each linear layer, once
    it has run, finds its outlier input channels, merges its adapter if it has one unmerged
    (:func:`~anybind.models.backbone.apply_adapter` with ``merge=False``), becomes int8 and gives
    back its fp32 pages, so the fp32 weights are never all resident at once."""
    if kind not in QUANTIZATIONS:
        raise CheckpointError(f"unknown quantization {kind!r} (known: {', '.join(QUANTIZATIONS)})")
    if backbone.device.type != "cpu":
        raise CheckpointError(f"int8 decoding is for the CPU; on {backbone.device.type} the backbone runs in bf16")
    if "fbgemm" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "fbgemm"
    # a peft model's own base runs its adapter layers as well, and takes logits_to_keep
    model = backbone.model = getattr(backbone.model, "get_base_model", lambda: backbone.model)()
    pages = _Pages(_file_mappings(), ctypes.CDLL(None, use_errno=True))  # the checkpoint's mapping lives throughout

    def after_forward(name, layer, inputs, output):
        _replace(model, name, layer, inputs[0].detach().reshape(-1, inputs[0].shape[-1]).abs().amax(dim=0), pages)

    # names, not the layers: a replaced layer (its fp32 weight) is freed as soon as it is replaced
    names = _linear_layers(model)
    hooks = [model.get_submodule(name).register_forward_hook(partial(after_forward, name)) for name in names]
    with torch.no_grad():  # in fp32, before a tied head quantizes the table
        embeds = model.get_input_embeddings()(_calibration_ids(backbone.tokenizer, calibration))
    with pages.temporaries_given_back():
        head = model.get_output_embeddings()
        if isinstance(head, nn.Linear) and head.weight is getattr(model.get_input_embeddings(), "weight", None):
            # tied: first, while least else is resident (its temporaries would set the peak at the end)
            _quantize_tied_head(model, next(n for n, m in model.named_modules() if m is head), head, pages)
        try:
            with torch.no_grad():
                model(inputs_embeds=embeds, **_last_logits_only(model))
        finally:
            for hook in hooks:
                hook.remove()
        for name in names:  # any layer the forward did not reach: no outlier channels known
            if not isinstance(model.get_submodule(name), Int8Layer):
                _replace(model, name, model.get_submodule(name), None, pages)
        embeddings = model.get_input_embeddings()
        if isinstance(embeddings, nn.Embedding):  # untied from the head
            model.set_input_embeddings(Int8Embedding.from_float(embeddings))
            pages.release(embeddings.weight, model)
    backbone.quantization = kind


def _replace(model: nn.Module, name: str, layer: nn.Module, peaks: torch.Tensor | None, pages: "_Pages") -> None:
    """Put an :class:`Int8Layer` in the place of ``layer`` (merging its adapter first) and give back its pages."""
    if _adapted(layer):
        layer.merge()
        layer = layer.base_layer
    _put(model, name, Int8Layer.from_float(layer, peaks))
    pages.release(layer.weight, model)


def _quantize_tied_head(model: nn.Module, name: str, head: nn.Linear, pages: "_Pages") -> None:
    """A head tied to the input embeddings, and the embeddings: both from one read of the table,
    each block of rows given back once read (no outlier channels: they would need a second read)."""
    values, scale = int8_rows(head.weight.detach(), read=pages.give_back)
    padding_idx = model.get_input_embeddings().padding_idx
    _put(model, name, Int8Layer.from_int8(values, scale, head.bias))
    model.set_input_embeddings(Int8Embedding(values, scale, padding_idx))
    pages.release(head.weight, model)


def _put(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _adapted(module: nn.Module) -> bool:
    """Whether ``module`` is an adapter's wrapper of a linear layer (peft's LoRA layer), not yet merged."""
    return isinstance(getattr(module, "base_layer", None), nn.Linear) and callable(getattr(module, "merge", None))


def _linear_layers(model: nn.Module) -> list[str]:
    """The names of the linear layers to quantize: an adapted one by its wrapper's name (the
    adapter's own small layers inside it are merged, not quantized)."""
    wrappers = [name + "." for name, m in model.named_modules() if _adapted(m)]
    return [name for name, m in model.named_modules()
            if _adapted(m) or (isinstance(m, nn.Linear) and not any(name.startswith(w) for w in wrappers))]


def _calibration_ids(tokenizer, requests: Sequence[str]) -> torch.Tensor:
    """``requests`` as one conversation, through the chat template when the tokenizer has one."""
    requests = list(requests)[:CALIBRATION_TURNS]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": r} for r in requests], tokenize=False,
                                             add_generation_prompt=True)
    else:
        text = " ".join(requests)
    return tokenizer(text, return_tensors="pt").input_ids


def _last_logits_only(model) -> dict:
    """Ask for the last position's logits alone where the model can (no vocabulary-wide logits
    for every calibration token: 49,152 floats each)."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


class Int8Layer(nn.Module):
    """A linear layer as a dynamic int8 one (a scale per output channel, FBGEMM), with two guards
    for the LM's outlier activations:

    * its outlier input channels (``outliers``, found in calibration) are multiplied in fp32 and
      the rest in int8 (LLM.int8()'s decomposition), so they do not set the scale of the rest;
    * each input row is scaled to a peak of 1 first, and its output back: the int8 layer
      quantizes its whole input with one scale, so in a prompt the tokens with the largest
      activations would set it for all; scaled, every token is quantized as if alone. Decoding
      (one token a step) needs no scaling.
    """

    def __init__(self, layer: nn.Module, outliers: torch.Tensor | None = None, kept: torch.Tensor | None = None,
                 outlier_weight: torch.Tensor | None = None):
        super().__init__()
        self.layer = layer
        self.out_features = layer.out_features
        self.in_features = layer.in_features + (0 if outliers is None else len(outliers))
        self.register_buffer("bias", layer.bias())  # read once: reading it unpacks the weight
        self.register_buffer("outliers", outliers)  # input channels multiplied in fp32
        self.register_buffer("kept", kept)  # the rest, multiplied in int8
        self.register_buffer("outlier_weight", outlier_weight)  # (out, len(outliers)) fp32

    @classmethod
    def from_float(cls, linear: nn.Linear, peaks: torch.Tensor | None = None) -> "Int8Layer":
        """``peaks``: each input channel's largest absolute activation in calibration (None: no
        outliers). The weight is read a block of rows at a time: no whole fp32 copy is made."""
        outliers = None if peaks is None else _outlier_channels(peaks)
        weight, kept = linear.weight.detach(), None
        if outliers is not None:
            kept = torch.ones(linear.in_features, dtype=torch.bool)
            kept[outliers] = False
            kept = kept.nonzero().squeeze(1)
        values, scale = int8_rows(weight, kept)
        outlier_weight = None if outliers is None else weight[:, outliers].float()
        return cls.from_int8(values, scale, linear.bias, outliers, kept, outlier_weight)

    @classmethod
    def from_int8(cls, values: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None,
                  outliers: torch.Tensor | None = None, kept: torch.Tensor | None = None,
                  outlier_weight: torch.Tensor | None = None) -> "Int8Layer":
        """From int8 ``values`` with a ``scale`` per row (:func:`int8_rows`)."""
        from torch.ao.nn.quantized.dynamic import Linear as Int8Linear

        bias = None if bias is None else bias.detach().float()
        with warnings.catch_warnings():  # torch's notice that quantized tensors are deprecated (this torch ships them)
            warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor", category=UserWarning)
            quantized = Int8Linear(values.shape[1], values.shape[0], bias_=bias is not None, dtype=torch.qint8)
            zero = torch.zeros(len(scale), dtype=torch.int64)
            quantized.set_weight_bias(torch._make_per_channel_quantized_tensor(values, scale.double(), zero, 0), bias)
        return cls(quantized, outliers, kept, outlier_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outliers is None:
            return self._scaled(x)
        return self._scaled(x.index_select(-1, self.kept)) + F.linear(x.index_select(-1, self.outliers),
                                                                       self.outlier_weight)

    def _scaled(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[:-1].numel() <= 1:
            return self.layer(x)
        peak = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-6)
        if self.bias is None:
            return self.layer(x / peak) * peak
        return (self.layer(x / peak) - self.bias) * peak + self.bias


def _outlier_channels(peaks: torch.Tensor) -> torch.Tensor | None:
    """The input channels whose calibrated peak is :data:`OUTLIER_RATIO` times the median
    channel's or more, in channel order; the largest :data:`MAX_OUTLIER_SHARE` of them at most
    (None: none)."""
    order = peaks.argsort(descending=True)
    count = int((peaks >= OUTLIER_RATIO * peaks.median().clamp(min=1e-6)).sum())
    count = min(count, int(MAX_OUTLIER_SHARE * len(peaks)))
    return order[:count].sort().values if count else None


class Int8Embedding(nn.Module):
    """An embedding table stored as int8 with a scale per row, looked up in fp32 (a quarter of
    the memory: SmolLM2's 49,152 x 576 table is 113 MB in fp32)."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, padding_idx: int | None = None):
        super().__init__()
        self.register_buffer("weight", weight)  # (V, H) int8
        self.register_buffer("scale", scale)  # (V,) fp32
        self.num_embeddings, self.embedding_dim = weight.shape
        self.padding_idx = padding_idx

    @classmethod
    def from_float(cls, embedding: nn.Embedding) -> "Int8Embedding":
        return cls(*int8_rows(embedding.weight.detach()), embedding.padding_idx)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight).float() * self.scale[ids].unsqueeze(-1)


def int8_rows(weight: torch.Tensor, columns: torch.Tensor | None = None, rows: int = 4096, read=None):
    """``weight`` (only its ``columns``, if given) as int8 with a symmetric scale per row, and the
    scales; ``rows`` rows at a time, so no fp32 copy of the whole matrix is ever made. ``read``,
    if given, is called with each block of rows once it has been read."""
    width = weight.shape[1] if columns is None else len(columns)
    values = torch.empty(weight.shape[0], width, dtype=torch.int8)
    scale = torch.empty(weight.shape[0], dtype=torch.float32)
    for start in range(0, weight.shape[0], rows):
        chunk = weight[start:start + rows].float()
        chunk = chunk if columns is None else chunk[:, columns]
        scale[start:start + rows] = chunk.abs().amax(dim=1).clamp(min=1e-12) / 127.5
        values[start:start + rows] = (chunk / scale[start:start + rows, None]).round_().clamp_(-128, 127).to(torch.int8)
        if read is not None:
            read(weight[start:start + rows])
    return values, scale


MADV_DONTNEED = 4
M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc)
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # the most glibc's own threshold grows to (64-bit)


class _Pages:
    """Gives back the resident pages of fp32 weights read from a memory-mapped checkpoint.
    transformers maps the safetensors file and its tensors are views of that one mapping, so
    dropping a tensor frees nothing: every page quantization read would stay resident (peak RSS
    1,474 MiB after quantizing instead of 1,187; bench/RESULTS.md, "int8: one layer at a time").
    ``MADV_DONTNEED`` unmaps them; a page read again would come back from the file. Only whole
    pages, only in a file mapping (``files``: address ranges). Linux only; elsewhere nothing is
    given back. And the heap's, where there is glibc."""

    def __init__(self, files: list[tuple[int, int]], libc):
        self.files, self.libc = files, libc

    def release(self, weight: torch.Tensor, model: nn.Module) -> None:
        """The pages of a replaced weight, unless a remaining parameter lies on them (a tied output head)."""
        first, last = _whole_pages(weight)
        if not any(p.data_ptr() < last and first < p.data_ptr() + p.numel() * p.element_size()
                   for p in model.parameters()):
            self.give_back(weight)

    def give_back(self, tensor: torch.Tensor) -> None:
        """The whole pages inside a contiguous ``tensor``, if it lies in a file mapping."""
        first, last = _whole_pages(tensor)
        if last > first and any(low <= first and last <= high for low, high in self.files):
            self.libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), MADV_DONTNEED)

    @contextmanager
    def temporaries_given_back(self):
        """glibc raises its threshold for serving a block by mmap each time it frees one, so
        layer-sized temporaries soon come from the heap, which never shrinks: within, it is held
        at its default (each one given back when freed), and after, the heap is trimmed and the
        threshold raised to its ceiling (decoding's growing caches are reused from the heap, not
        mapped anew each step). bench/RESULTS.md, "int8: outlier channels in fp32"."""
        glibc = hasattr(self.libc, "mallopt") and hasattr(self.libc, "malloc_trim")
        if glibc:
            self.libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
        try:
            yield
        finally:
            if glibc:
                self.libc.malloc_trim(0)
                self.libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)


def _whole_pages(tensor: torch.Tensor) -> tuple[int, int]:
    start, end = tensor.data_ptr(), tensor.data_ptr() + tensor.numel() * tensor.element_size()
    return -(-start // mmap.PAGESIZE) * mmap.PAGESIZE, end // mmap.PAGESIZE * mmap.PAGESIZE


def _file_mappings() -> list[tuple[int, int]]:
    """The address ranges this process maps from files (none off Linux)."""
    ranges = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].startswith("/"):
                    low, high = (int(x, 16) for x in fields[0].split("-"))
                    ranges.append((low, high))
    except OSError:  # not Linux
        pass
    return ranges
