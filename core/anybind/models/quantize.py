"""int8 weights for decoding on the CPU.

Decoding one token at a time is bound by reading the weights from memory: SmolLM2-135M's fp32
weights are 540 MB, which caps fp32 decode near 20 tokens/s on a 2-core machine. Dynamic int8
quantization (``torch.ao.quantization.quantize_dynamic``) stores the LM's ``nn.Linear`` layers
(the output head included; the MLP output projections and the value projections not, see
:data:`KEEP_FP32`) as int8 with a scale per output channel and runs fused int8 matmuls (FBGEMM),
a quarter of the bytes. Each layer's input is quantized on the fly with one scale, after each
token's row is scaled to the same peak (:class:`RowScaled`), so a prompt's tokens do not share
the scale its loudest token sets. The input embeddings are int8 too, a scale per row
(:class:`Int8Embedding`), looked up in fp32, so soft tokens and generative tokens are written
into the sequence as before. Opt-in (``--int8``): about 1.5x faster than fp32 here, and chat
accuracy within 0.02-0.04 of fp32's (bench/RESULTS.md, "int8: each token's own scale"). For
inference only: training always sees the fp32 backbone. ``bench/chat_speed.py`` measures speed
and memory.
"""

from __future__ import annotations

import ctypes
import mmap
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from anybind.errors import CheckpointError

QUANTIZATIONS = ("int8",)
#: linear layers left in fp32, by name: the MLP output projections of Llama-, GPT-2- and BERT-style
#: blocks, and Llama's value projections (3% of its weights; their int8 outputs were off by 10-13%,
#: every other layer's by 3-5%: bench/RESULTS.md, "int8: each token's own scale")
KEEP_FP32 = ("down_proj", "c_proj", "fc2", "dense_4h_to_h", "v_proj")


def quantize_backbone(backbone, kind: str = "int8") -> None:
    """Quantize ``backbone``'s LM in place (after any adapter is merged into it), one layer at a time."""
    if kind not in QUANTIZATIONS:
        raise CheckpointError(f"unknown quantization {kind!r} (known: {', '.join(QUANTIZATIONS)})")
    if backbone.device.type != "cpu":
        raise CheckpointError(f"int8 decoding is for the CPU; on {backbone.device.type} the backbone runs in bf16")
    from torch.ao.nn.quantized.dynamic import Linear as Int8Linear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    if "fbgemm" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "fbgemm"
    model = backbone.model
    # A scale per output channel; and the MLP's output projections stay fp32: their inputs carry
    # the LM's outlier activations, and quantized (one scale per tensor of activations) they
    # took chat accuracy from 0.90 to 0.29 (bench/RESULTS.md, "int8 decoding").
    layers = [name for name, module in model.named_modules()
              if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] not in KEEP_FP32]
    files, libc = _file_mappings(), ctypes.CDLL(None, use_errno=True)  # the checkpoint's mapping lives throughout
    for name in layers:
        parent, _, child = name.rpartition(".")
        old = model.get_submodule(name)
        old.qconfig = per_channel_dynamic_qconfig
        with warnings.catch_warnings():  # torch.ao's deprecation notice (the API is what this torch ships)
            warnings.simplefilter("ignore")
            setattr(model.get_submodule(parent) if parent else model, child, RowScaled(Int8Linear.from_float(old)))
        _release(old.weight, model, files, libc)
    embeddings = model.get_input_embeddings()
    if isinstance(embeddings, nn.Embedding):  # after the head: a tied head read it to quantize
        model.set_input_embeddings(Int8Embedding.from_float(embeddings))
        _release(embeddings.weight, model, files, libc)
    backbone.quantization = kind


class RowScaled(nn.Module):
    """A dynamic int8 layer whose input rows are each scaled to a peak of 1 first, and its output
    back: the layer quantizes its whole input with one scale, so in a prompt the tokens with the
    largest activations (the attention sink's) would set it for all, and crush the rest. Scaled,
    every token is quantized as if alone; decoding (one token a step) needs no scaling. Over
    four prompts the logits' mean cosine to fp32's rose from 0.912 to 0.972 (bench/RESULTS.md)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.register_buffer("bias", layer.bias())  # read once: reading it unpacks the weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[:-1].numel() <= 1:
            return self.layer(x)
        peak = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-6)
        if self.bias is None:
            return self.layer(x / peak) * peak
        return (self.layer(x / peak) - self.bias) * peak + self.bias


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
    def from_float(cls, embedding: nn.Embedding, rows: int = 4096) -> "Int8Embedding":
        """Quantize ``rows`` rows at a time, so no fp32 copy of the whole table is ever made."""
        table = embedding.weight.detach()
        weight = torch.empty(table.shape, dtype=torch.int8)
        scale = torch.empty(table.shape[0], dtype=torch.float32)
        for start in range(0, table.shape[0], rows):
            chunk = table[start:start + rows].float()
            scale[start:start + rows] = chunk.abs().amax(dim=1).clamp(min=1e-12) / 127
            weight[start:start + rows] = (chunk / scale[start:start + rows, None]).round_().clamp_(-127, 127).to(torch.int8)
        return cls(weight, scale, embedding.padding_idx)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight).float() * self.scale[ids].unsqueeze(-1)


MADV_DONTNEED = 4


def _release(weight: torch.Tensor, model: nn.Module, files: list[tuple[int, int]], libc) -> None:
    """Give back the resident pages of a replaced fp32 weight that was read from a memory-mapped
    checkpoint. transformers maps the safetensors file and its tensors are views of that one
    mapping, so dropping a tensor frees nothing: every page quantization read would stay
    resident (peak RSS 1,474 MiB after quantizing instead of 1,187; bench/RESULTS.md, "int8: one
    layer at a time"). ``MADV_DONTNEED`` unmaps them; a page read again would come back from the
    file. Only whole pages inside the weight, only in a file mapping (``files``: address ranges),
    and never one a remaining parameter lies on (a tied output head). Linux only."""
    start, end = weight.data_ptr(), weight.data_ptr() + weight.numel() * weight.element_size()
    page = mmap.PAGESIZE
    first, last = -(-start // page) * page, end // page * page
    if last <= first or not any(low <= start and end <= high for low, high in files):
        return
    for p in model.parameters():
        if p.data_ptr() < last and first < p.data_ptr() + p.numel() * p.element_size():
            return
    libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), MADV_DONTNEED)


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
