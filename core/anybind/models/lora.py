"""A saved LoRA adapter (peft's files) applied to the plain-torch Llama of :mod:`anybind.models.llama`.

peft itself wraps transformers models only, and importing it imports them. The instruct stage
saves ``adapter_config.json`` + ``adapter_model.safetensors``; each adapted linear layer ``W``
gains ``scaling * B @ A`` (``scaling = lora_alpha / r``, or ``/ sqrt(r)`` with rsLoRA), which
is all a plain LoRA adapter is. Anything richer (DoRA, per-module ranks or alphas, biases,
extra trained modules) is not :func:`plain`, and chat loads the LM with transformers and peft.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from anybind.errors import CheckpointError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_PREFIX = "base_model.model."  # peft's name for the wrapped model


def plain(adapter_dir: Path) -> bool:
    """Whether ``adapter_dir`` holds a plain LoRA adapter this module applies."""
    try:
        config = json.loads((Path(adapter_dir) / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return False
    return (config.get("peft_type") == "LORA" and not config.get("use_dora") and not config.get("fan_in_fan_out")
            and config.get("bias", "none") == "none" and not config.get("lora_bias")
            and not config.get("modules_to_save") and not config.get("rank_pattern")
            and not config.get("alpha_pattern") and not config.get("trainable_token_indices")
            and (Path(adapter_dir) / WEIGHTS_NAME).is_file())


class LoRALinear(nn.Module):
    """A linear layer with its adapter beside it. ``base_layer`` and :meth:`merge` are what
    peft's LoRA layers offer, so :mod:`anybind.models.quantize` merges either one layer at a time."""

    def __init__(self, base_layer: nn.Linear, down: torch.Tensor, up: torch.Tensor, scaling: float):
        super().__init__()
        self.base_layer = base_layer
        self.register_buffer("down", down)  # A, (r, in)
        self.register_buffer("up", up)  # B, (out, r)
        self.scaling = scaling

    @property
    def delta(self) -> torch.Tensor:
        return (self.up.float() @ self.down.float() * self.scaling).to(self.base_layer.weight.dtype)

    def merge(self) -> None:
        self.base_layer.weight.data += self.delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + (x @ self.down.to(x.dtype).T @ self.up.to(x.dtype).T) * self.scaling


def apply(model: nn.Module, adapter_dir: Path, merge: bool = True) -> None:
    """Merge the adapter in ``adapter_dir`` into ``model``'s layers, in place, or (``merge=False``)
    put each adapted layer in a :class:`LoRALinear`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / CONFIG_NAME).read_text())
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    scaling = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
    try:
        weights = load_file(str(adapter_dir / WEIGHTS_NAME))
    except (SafetensorError, OSError) as exc:  # as anybind.persistence.load_model_dir catches
        raise CheckpointError(f"{adapter_dir / WEIGHTS_NAME}: cannot read the adapter ({exc})") from None
    layers = sorted({key.removeprefix(_PREFIX).rsplit(".lora_", 1)[0] for key in weights if ".lora_" in key})
    if not layers:
        raise CheckpointError(f"{adapter_dir / WEIGHTS_NAME}: holds no LoRA weights")
    for name in layers:
        try:
            layer = model.get_submodule(name)
            down, up = (weights[f"{_PREFIX}{name}.lora_{part}.weight"] for part in "AB")
        except (AttributeError, KeyError):
            raise CheckpointError(f"{adapter_dir}: its layer {name} is not in this LM, or its A or B is missing") from None
        if not isinstance(layer, nn.Linear) or up.shape[0] != layer.out_features or down.shape[1] != layer.in_features:
            raise CheckpointError(f"{adapter_dir}: its {name} does not fit this LM's layer ({tuple(up.shape)} x {tuple(down.shape)})")
        wrapped = LoRALinear(layer, down, up, scaling)
        if merge:
            wrapped.merge()
        else:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, wrapped)
