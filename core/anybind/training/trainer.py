"""What every training stage shares: the Accelerator, metrics, and resumable checkpoints.

One code path for 1 CPU, 1 GPU (bf16 autocast) or several processes (``torchrun`` /
``accelerate launch``): stages call :func:`make_accelerator` and let Accelerate wrap the
model and optimizer. Mid-stage checkpoints are directories too: the model as
``config.json`` + safetensors, the optimizer state flattened into ``optimizer.safetensors``
(its hyper-parameters in ``optimizer.json``), the step in ``state.json``, and every random
state the loop draws from (the data order, the stage's own generators, torch's, numpy's and
Python's) in ``rng.json`` + ``torch_rng.safetensors``: a stage killed at any step and run
again ends with the same weights as one that was never interrupted.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from anybind.persistence import load_model_dir, save_model_dir, write_json_atomic


#: Called after every optimiser step of every stage (the quickstart uses it to take back the
#: core a background job was using as soon as that job ends).
STEP_HOOKS: list[Callable[[], None]] = []


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


def save_random_state(path: Path, rngs: dict[str, random.Random]) -> None:
    """Every random state a loop draws from: ``rngs`` (the data order, a stage's own), and the
    global generators of Python, numpy and torch (augmentations, dropout)."""
    import numpy as np
    from safetensors.torch import save_file

    kind, keys, position, *rest = np.random.get_state()
    write_json_atomic(path / "rng.json", {
        "rngs": {name: _state_to_json(rng.getstate()) for name, rng in rngs.items()},
        "python": _state_to_json(random.getstate()),
        "numpy": [kind, keys.tolist(), int(position), *[float(v) if isinstance(v, float) else int(v) for v in rest]],
    })
    tensors = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(tensors, str(path / "torch_rng.safetensors"))


def load_random_state(path: Path, rngs: dict[str, random.Random]) -> None:
    import numpy as np
    from safetensors.torch import load_file

    state = json.loads((path / "rng.json").read_text())
    for name, rng in rngs.items():
        rng.setstate(_state_from_json(state["rngs"][name]))
    random.setstate(_state_from_json(state["python"]))
    kind, keys, position, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, *rest))
    tensors = load_file(str(path / "torch_rng.safetensors"))
    torch.set_rng_state(tensors["cpu"])
    if torch.cuda.is_available() and "cuda0" in tensors:
        torch.cuda.set_rng_state_all([tensors[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in tensors])


def _state_to_json(state):
    return [_state_to_json(v) for v in state] if isinstance(state, tuple) else state


def _state_from_json(state):
    return tuple(_state_from_json(v) for v in state) if isinstance(state, list) else state


def save_progress(path: Path, step: int, optimizer: torch.optim.Optimizer, save_model,
                  rngs: dict[str, random.Random]) -> None:
    """Write a mid-stage checkpoint atomically: ``save_model(dir)``, optimizer, random states, step."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(tmp / "model")
    save_optimizer(optimizer, tmp)
    save_random_state(tmp, rngs)
    write_json_atomic(tmp / "state.json", {"step": step})  # last: a checkpoint without it is incomplete
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.replace(old)
    tmp.replace(path)
    shutil.rmtree(old, ignore_errors=True)


def progress_step(path: Path) -> int:
    state = path / "state.json"
    return json.loads(state.read_text())["step"] if state.is_file() else 0


def say(accelerator, message: str) -> None:
    """Print a line from the main process without breaking its progress bars."""
    if accelerator.is_main_process:
        from tqdm.auto import tqdm

        tqdm.write(message)


@dataclass
class LoopSettings:
    """Hyper-parameters and housekeeping of one optimisation loop."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    seed: int = 0
    save_every: int = 100
    progress: bool = True
    #: ``{parameter-name prefix: multiplier}``: parameters under a prefix learn at ``lr * multiplier``.
    lr_scales: dict[str, float] = field(default_factory=dict)


def _param_groups(module: nn.Module, loop: LoopSettings) -> list[dict]:
    """Trainable parameters grouped by learning rate (``loop.lr_scales``; the first matching prefix wins)."""
    groups: dict[float, list] = {}
    for name, param in module.named_parameters():
        if param.requires_grad:
            scale = next((v for k, v in loop.lr_scales.items() if name.startswith(k)), 1.0)
            groups.setdefault(scale, []).append(param)
    return [{"params": params, "lr": loop.lr * scale} for scale, params in groups.items()]


def run_loop(
    *,
    stage: str,
    name: str,
    module: nn.Module,
    n_rows: int,
    step_fn: Callable[[nn.Module, list[int]], torch.Tensor],
    loop: LoopSettings,
    accelerator,
    progress_dir: Path,
    metrics: MetricsLog,
    report: Callable[[nn.Module], dict[str, float]] | None = None,
    rngs: dict[str, random.Random] | None = None,
) -> float:
    """The shared optimisation loop of every stage: row sampling, AdamW with warm-up + cosine
    decay, progress bar, JSON-lines metrics, and resumable mid-stage checkpoints.

    ``step_fn(model, row_indices)`` returns the loss of one batch; ``report(module)`` adds
    numbers (e.g. a learned temperature) to the bar and the metrics; ``rngs`` are the stage's
    own generators that ``step_fn`` draws from, checkpointed with the rest so that a resumed
    run is the uninterrupted one. Returns the seconds spent.
    """
    from tqdm.auto import tqdm

    per_process = max(1, loop.batch_size // accelerator.num_processes)
    optimizer = torch.optim.AdamW(_param_groups(module, loop), lr=loop.lr, weight_decay=loop.weight_decay)
    # The data order: which rows each step trains on.
    rngs = {"rows": random.Random(loop.seed * 1000 + accelerator.process_index * 17), **(rngs or {})}
    start = _resume(module, optimizer, rngs, progress_dir, accelerator, f"{stage} {name}")
    if start:
        say(accelerator, f"{stage} {name}: resuming at step {start}/{loop.steps}")
    schedule = _warmup_cosine(optimizer, loop.steps, start)
    model, optimizer = accelerator.prepare(module, optimizer)
    began = time.time()
    bar = tqdm(range(start, loop.steps), desc=f"{stage} {name}", unit="step", initial=start, total=loop.steps,
               disable=not (loop.progress and accelerator.is_main_process))
    for step in bar:
        model.train()
        indices = [rngs["rows"].randrange(n_rows) for _ in range(per_process)]
        with accelerator.autocast():
            loss = step_fn(model, indices)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        schedule.step()
        for hook in list(STEP_HOOKS):
            hook()
        unwrapped = accelerator.unwrap_model(model)
        _show(bar, metrics, stage, name, step, loop.steps, float(loss.detach()), report(unwrapped) if report else {},
              schedule.get_last_lr()[0])
        if accelerator.is_main_process and loop.save_every and (step + 1) % loop.save_every == 0 and step + 1 < loop.steps:
            save_progress(progress_dir, step + 1, optimizer,
                          lambda d: save_model_dir(d, {"format": f"anybind.{stage}-progress"}, unwrapped.state_dict()),
                          rngs)
    accelerator.wait_for_everyone()
    _check_in_sync(accelerator, model, metrics, stage, name)
    return time.time() - began


def _show(bar, metrics: MetricsLog, stage: str, name: str, step: int, steps: int, loss: float, extra: dict,
          lr: float) -> None:
    """The step's loss (and ``extra`` numbers) on the progress bar; every 10th and the last in the metrics."""
    bar.set_postfix(loss=f"{loss:.3f}", **{k: f"{v:.3f}" for k, v in extra.items()})
    if step % 10 == 0 or step == steps - 1:
        metrics.write(stage=stage, modality=name, step=step + 1, loss=round(loss, 5),
                      **{k: round(v, 5) for k, v in extra.items()}, lr=lr)


def _other_configuration(own: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> str:
    """What makes a mid-stage checkpoint's weights (``saved``) another configuration's than this
    module's (``own``; '' if none): a tensor of another shape, or one this module does not have."""
    for key, tensor in saved.items():
        if key not in own:
            return f"it has {key}, this run does not"
        if tuple(own[key].shape) != tuple(tensor.shape):
            return f"{key} is {tuple(tensor.shape)} there, {tuple(own[key].shape)} here"
    return ""


def _resume(module: nn.Module, optimizer, rngs: dict[str, random.Random], progress_dir: Path, accelerator,
            part: str) -> int:
    """Load a mid-stage checkpoint if there is one (weights, optimizer, random states); its step, else 0.
    One of a run with other settings (a wider adapter, another model) is not this run's: dropped."""
    start = progress_step(progress_dir)
    if not start:
        return 0
    saved = load_model_dir(progress_dir / "model")[1]
    other = _other_configuration(module.state_dict(), saved)
    if other:  # every process reads the same files, so all take this branch together
        say(accelerator, f"{part}: the progress saved in {progress_dir} is of another configuration ({other}); "
                         "starting over")
        if accelerator.is_main_process:
            shutil.rmtree(progress_dir, ignore_errors=True)
        accelerator.wait_for_everyone()
        return 0
    module.load_state_dict(saved, strict=False)
    load_optimizer(optimizer, progress_dir)
    load_random_state(progress_dir, rngs)
    return start


def _warmup_cosine(optimizer, steps: int, start: int):
    """Linear warm-up over the first 5% of steps, then cosine decay to zero; positioned at ``start``."""
    warmup = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(1, steps))),
        last_epoch=start - 1 if start else -1,
    )


def _check_in_sync(accelerator, model, metrics: MetricsLog, stage: str, name: str) -> None:
    """With several processes, record whether their weights ended identical (they should)."""
    if accelerator.num_processes <= 1:
        return
    checksum = torch.stack([p.detach().float().sum() for p in accelerator.unwrap_model(model).parameters()]).sum()
    gathered = accelerator.gather(checksum.reshape(1).to(accelerator.device))
    metrics.write(stage=stage, modality=name, event="ranks_in_sync",
                  in_sync=bool(torch.allclose(gathered, gathered[0].expand_as(gathered), rtol=1e-5)),
                  processes=accelerator.num_processes)
