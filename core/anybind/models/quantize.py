"""int8 weights for decoding on the CPU.

Decoding one token at a time is bound by reading the weights from memory: SmolLM2-135M's fp32
weights are 540 MB, which caps fp32 decode near 20 tokens/s on a 2-core machine. Dynamic int8
quantization (``torch.ao.quantization.quantize_dynamic``) stores the LM's ``nn.Linear`` layers (the output head
included, the MLP output projections not) as int8 with a scale per output channel and runs fused int8 matmuls (FBGEMM),
a quarter of the bytes; each layer's input is quantized on the fly (one scale per tensor), and the
input embeddings are untouched, so soft tokens and generative tokens are written into the
sequence as before. Opt-in (``--int8``): it is 1.4-1.6x faster than fp32 here, but chat accuracy
moved by up to 0.03 (bench/RESULTS.md, "int8 decoding"). For inference only:
training always sees the fp32 backbone. ``bench/chat_speed.py`` measures speed and memory,
``bench/RESULTS.md`` the accuracy against fp32.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from anybind.errors import CheckpointError

QUANTIZATIONS = ("int8",)
#: linear layers left in fp32, by name: the MLP output projections of Llama-, GPT-2- and BERT-style blocks
KEEP_FP32 = ("down_proj", "c_proj", "fc2", "dense_4h_to_h")


def quantize_backbone(backbone, kind: str = "int8") -> None:
    """Quantize ``backbone``'s LM in place (after any adapter is merged into it)."""
    if kind not in QUANTIZATIONS:
        raise CheckpointError(f"unknown quantization {kind!r} (known: {', '.join(QUANTIZATIONS)})")
    if backbone.device.type != "cpu":
        raise CheckpointError(f"int8 decoding is for the CPU; on {backbone.device.type} the backbone runs in bf16")
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if "fbgemm" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "fbgemm"
    with warnings.catch_warnings():  # torch.ao's deprecation notice (the API is what this torch ships)
        warnings.simplefilter("ignore")
        # A scale per output channel; and the MLP's output projections stay fp32: their inputs carry
        # the LM's outlier activations, and quantized (one scale per tensor of activations) they
        # took chat accuracy from 0.90 to 0.29 (bench/RESULTS.md, "int8 decoding").
        layers = {name for name, module in backbone.model.named_modules()
                  if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] not in KEEP_FP32}
        backbone.model = quantize_dynamic(backbone.model, {name: per_channel_dynamic_qconfig for name in layers},
                                          dtype=torch.qint8, inplace=True)
    backbone.quantization = kind
