"""Benchmark: wall time of the whole bind stage on the sample world, and each modality's share.

    .venv/bin/python bench/bind_time.py [--world runs/world] [--out runs/bench-bind]

Builds the world if missing, trains every installed modality from scratch into --out
(deleted first), then prints the total, each modality's seconds and share, the ratio to
the 4-minute target, and the held-out metrics.
"""

import argparse
import json
import shutil
import time
from pathlib import Path

import anybind
from anybind.training.bind import BindSettings, train_bind
from anybind.eval import evaluate_bind
from anybind.data.world import build_world

TARGET_SECONDS = 240

parser = argparse.ArgumentParser()
parser.add_argument("--world", default="runs/world")
parser.add_argument("--out", default="runs/bench-bind")
args = parser.parse_args()

world = Path(args.world)
if not (world / "manifest.jsonl").is_file():
    build_world(world)
out = Path(args.out)
shutil.rmtree(out, ignore_errors=True)

began = time.time()
results = train_bind(world, out, settings=BindSettings(progress=False))
total = time.time() - began
print(f"bind stage: {total:.1f}s total (target {TARGET_SECONDS}s, ratio {total / TARGET_SECONDS:.2f})")
for r in results:
    print(f"  {r['modality']:<11} {r['seconds']:6.1f}s  {100 * r['seconds'] / total:5.1f}%  ({r['rows']} rows)")
print(f"  {'(loading)':<11} {total - sum(r['seconds'] for r in results):6.1f}s  data loading, preprocessing, frozen targets")
metrics = evaluate_bind(anybind.load(out), world)
print(json.dumps(metrics, indent=2))
