"""A soup: several trainings from one start, kept as their mean (Wortsman et al., "Model soups", 2022).

instruct's gates (when to draw, when to speak) are what its seed decides most: two seeds of one
recipe on the same towers made the asked speech 0.75 or 0.95 of the time, and all three outputs
of "..., draw it and say it" 0.55 or 0.85 (bench/RESULTS.md, "instruct: a soup of seeds"). The
mean of two such trainings was as good as the better one on each figure, or better.

* Modules saved as ``config.json`` + ``model.safetensors`` (projectors, outputs): each weight
  is averaged.
* LoRA adapters (peft's files): the mean of the updates ``B_i A_i`` is itself a LoRA of rank
  ``k r``, ``A = [A_1; ...; A_k]`` and ``B = [B_1, ..., B_k] / k``, with ``lora_alpha`` raised
  so that the scaling stays the same; nothing is approximated, and peft and
  :mod:`anybind.models.lora` load it as any adapter.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch

from anybind.errors import CheckpointError
from anybind.models import lora
from anybind.persistence import load_model_dir, save_model_dir, write_json_atomic


def mean_module(sources: list[Path], out: Path) -> None:
    """``out``: the first source's config, every weight the mean of the sources' (integer
    buffers, e.g. counters, the first's)."""
    loaded = [load_model_dir(s) for s in sources]
    config, first = loaded[0]
    for source, (_, weights) in zip(sources[1:], loaded[1:]):
        if weights.keys() != first.keys() or any(weights[k].shape != first[k].shape for k in first):
            raise CheckpointError(f"{source}: not the same module as {sources[0]} (other weights or shapes)")
    mean = {k: torch.stack([w[k].float() for _, w in loaded]).mean(0).to(v.dtype) if v.is_floating_point() else v
            for k, v in first.items()}
    save_model_dir(out, config, mean)


def mean_adapter(sources: list[Path], out: Path) -> None:
    """``out``: a LoRA adapter whose update is the mean of the sources' (plain LoRA adapters of one shape)."""
    from safetensors.torch import load_file, save_file

    for source in sources:
        if not lora.plain(source):
            raise CheckpointError(f"{source}: not a plain LoRA adapter; only those are averaged")
    k = len(sources)
    config = json.loads((sources[0] / lora.CONFIG_NAME).read_text())
    weights = [load_file(str(s / lora.WEIGHTS_NAME)) for s in sources]
    if any(w.keys() != weights[0].keys() for w in weights):
        raise CheckpointError(f"{sources[1:]}: adapters of other layers than {sources[0]}'s")
    mean = {}
    for key in weights[0]:
        if ".lora_A." in key:
            mean[key] = torch.cat([w[key] for w in weights], dim=0)
        elif ".lora_B." in key:
            mean[key] = torch.cat([w[key] for w in weights], dim=1) / k
        else:
            raise CheckpointError(f"{sources[0] / lora.WEIGHTS_NAME}: {key} is no LoRA A or B")
    # scaling alpha / r (rsLoRA: alpha / sqrt(r)) stays what each source's was at rank k r
    config["r"] = int(config["r"]) * k
    config["lora_alpha"] = float(config["lora_alpha"]) * (math.sqrt(k) if config.get("use_rslora") else k)
    staging = out.with_name(f".{out.name}.soup")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file(mean, str(staging / lora.WEIGHTS_NAME), metadata={"format": "pt"})
    write_json_atomic(staging / lora.CONFIG_NAME, config)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
