"""What every training stage shares: the Accelerator, metrics, and resumable checkpoints.

One code path for 1 CPU, 1 GPU (bf16 autocast) or several processes (``torchrun`` /
``accelerate launch``): stages call :func:`make_accelerator` and let Accelerate wrap the
model and optimizer. Mid-stage checkpoints are directories too: the model as
``config.json`` + safetensors, the optimizer state flattened into ``optimizer.safetensors``
(its hyper-parameters in ``optimizer.json``), and the step in ``state.json``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from anybind.persistence import write_json_atomic


def make_accelerator(cpu: bool | None = None):
    from accelerate import Accelerator

    use_cpu = (not torch.cuda.is_available()) if cpu is None else cpu
    # bf16 only where it is fast: on CPUs here bf16 matmuls are ~300x slower than fp32.
    precision = "bf16" if not use_cpu and torch.cuda.is_bf16_supported() else "no"
    return Accelerator(cpu=use_cpu, mixed_precision=precision)


class MetricsLog:
    """Append-only JSON-lines metrics, written by the main process only."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self.start = time.time()

    def write(self, **record: Any) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"time": round(time.time() - self.start, 3), **record}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def save_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    from safetensors.torch import save_file

    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            key = f"{index}.{name}"
            if torch.is_tensor(value):
                tensors[key] = value.detach().cpu().contiguous().clone()
            else:
                scalars[key] = value
    save_file(tensors, str(path / "optimizer.safetensors"))
    write_json_atomic(path / "optimizer.json", {"param_groups": state["param_groups"], "scalars": scalars})


def load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(path / "optimizer.safetensors"))
    meta = json.loads((path / "optimizer.json").read_text())
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_progress(path: Path, step: int, optimizer: torch.optim.Optimizer, save_model) -> None:
    """Write a mid-stage checkpoint atomically: ``save_model(dir)``, optimizer, step."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(tmp / "model")
    save_optimizer(optimizer, tmp)
    write_json_atomic(tmp / "state.json", {"step": step})
    if path.exists():
        shutil.rmtree(path)
    tmp.replace(path)


def progress_step(path: Path) -> int:
    state = path / "state.json"
    return json.loads(state.read_text())["step"] if state.is_file() else 0
