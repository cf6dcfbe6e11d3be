"""The stage helper's guarantees, on real subprocesses: one writer per output directory, and a
stage killed with SIGKILL at any step resumes to exactly the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from anybind.errors import AnybindError
from anybind.training.stage import DirectoryLocked, directory_lock
from conftest import BIN, run_cli

# Same thread count everywhere: a different reduction order would change the last bits.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _bind(world: Path, out: Path, *extra: str) -> list[str]:
    return [str(BIN / "anybind"), "train", "bind", "--manifest", str(world), "--out", str(out), *extra]


def _wait_for(predicate, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.time() < deadline, "timed out waiting for the stage"
        time.sleep(0.05)


def test_a_second_run_into_the_same_directory_stops_naming_the_first(small_world, tmp_path):
    out = tmp_path / "bind"
    first = subprocess.Popen(_bind(small_world, out, "--modality", "image", "--steps", "5000"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, **ONE_THREAD})
    try:
        _wait_for(lambda: (out / ".lock").is_file() and str(first.pid) in (out / ".lock").read_text(), first)
        second = run_cli("train", "bind", "--manifest", str(small_world), "--out", str(out), "--modality", "image",
                         "--steps", "5", timeout=120)
        assert second.returncode != 0 and "Traceback" not in second.stderr
        assert str(out.resolve()) in second.stderr and f"process {first.pid}" in second.stderr
        assert first.poll() is None  # the first run goes on, untouched
    finally:
        first.kill()
        first.wait()
    # The lock dies with its process (kill -9 included): the next run may write again.
    with directory_lock(out):
        pass


def test_the_lock_is_reentrant_in_one_process_and_exclusive_across_processes(tmp_path):
    with directory_lock(tmp_path / "d"):
        with directory_lock(tmp_path / "d"):  # a stage inside a stage of the same run
            pass
        code = ("import sys; from anybind.training.stage import directory_lock\n"
                "try:\n    directory_lock(sys.argv[1]).__enter__()\nexcept Exception as e:\n    print(type(e).__name__, e)")
        proc = subprocess.run([str(BIN / "python"), "-c", code, str(tmp_path / "d")], capture_output=True, text=True,
                              timeout=60)
        assert proc.stdout.startswith("DirectoryLocked") and f"process {os.getpid()}" in proc.stdout
    assert issubclass(DirectoryLocked, AnybindError)
    with directory_lock(tmp_path / "d"):  # released on exit
        pass


def _tower(out: Path, modality: str) -> dict:
    return load_file(str(out / modality / "model.safetensors"))


@pytest.mark.slow
def test_kill_9_mid_stage_then_rerun_gives_the_uninterrupted_weights(small_world, tmp_path):
    args = ("--steps", "24", "--save-every", "4", "--batch-size", "32")
    env = {**os.environ, **ONE_THREAD}
    whole = tmp_path / "whole"
    subprocess.run(_bind(small_world, whole, *args), check=True, env=env, capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_bind(small_world, killed, *args), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    state = killed / ".progress" / "audio" / "state.json"  # audio: its own target sampler, augmentation
    _wait_for(lambda: state.is_file() and json.loads(state.read_text())["step"] >= 8, process)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "audio" / "training.json").exists()
    rerun = subprocess.run(_bind(small_world, killed, *args), env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming at step" in rerun.stderr + rerun.stdout
    for modality in ("image", "audio"):
        a, b = _tower(whole, modality), _tower(killed, modality)
        assert a.keys() == b.keys()
        worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
        assert worst <= 1e-6, (modality, worst)


def test_progress_saved_by_another_configuration_is_started_over_not_loaded(tmp_path, capsys):
    """A stage stopped mid-way, then run with other settings (a wider adapter, say): its saved
    progress cannot load into the new module, so the run says so and starts from step 0."""
    import torch
    from accelerate import Accelerator

    from anybind.training.trainer import LoopSettings, MetricsLog, run_loop

    def run(width: int, steps: int, stop_at: int | None = None):
        torch.manual_seed(0)
        module = torch.nn.Linear(4, width)
        seen = []

        def step_fn(model, rows):
            seen.append(len(seen))
            if stop_at is not None and len(seen) > stop_at:
                raise KeyboardInterrupt
            return model(torch.ones(len(rows), 4)).pow(2).mean()

        loop = LoopSettings(steps=steps, batch_size=2, lr=1e-2, save_every=2, progress=False)
        run_loop(stage="test", name="part", module=module, n_rows=8, step_fn=step_fn, loop=loop,
                 accelerator=Accelerator(cpu=True), progress_dir=tmp_path / "progress",
                 metrics=MetricsLog(tmp_path / "metrics.jsonl"))
        return seen

    with pytest.raises(KeyboardInterrupt):
        run(width=3, steps=6, stop_at=3)  # stopped after saving its progress at step 2
    assert json.loads((tmp_path / "progress" / "state.json").read_text())["step"] == 2
    assert len(run(width=5, steps=6)) == 6  # every step run again, none loaded
    out = capsys.readouterr()
    assert "another configuration" in out.out + out.err and "is (3,) there, (5,) here" in out.out + out.err
