"""The bind stage in two CPU processes (torchrun + Accelerate, gloo): gradients stay in sync."""

import json
import os
import subprocess

import pytest

from conftest import BIN, run_cli


@pytest.mark.slow
def test_bind_runs_in_two_processes_with_synced_gradients(tmp_path):
    world = tmp_path / "world"
    run_cli("world", "build", str(world), "--modality", "image", "--modality", "pointcloud", "--limit", "200", check=True)
    out = tmp_path / "bind"
    cmd = [
        str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29517", str(BIN / "anybind"),
        "train", "bind", "--manifest", str(world), "--out", str(out), "--steps", "8", "--batch-size", "32",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    events = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    syncs = [e for e in events if e.get("event") == "ranks_in_sync"]
    assert [(e["modality"], e["processes"], e["in_sync"]) for e in syncs] == [("image", 2, True), ("pointcloud", 2, True)]
    assert json.loads((out / "config.json").read_text())["modalities"] == ["image", "pointcloud", "text"]
