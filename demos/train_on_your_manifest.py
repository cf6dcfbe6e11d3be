"""Bring your own data: write a manifest, bind a modality's tower against images, evaluate it.

    make quickstart                                # once: builds runs/quickstart/world
    python demos/train_on_your_manifest.py         # videos and images in /tmp/my-data, under a minute
    python demos/train_on_your_manifest.py --modality audio --data ~/my-digits --per-label 80 --steps 300

"Your" data here is a few hundred files copied out of the sample world into a folder of
your own, with a label and a caption per image, described by a manifest (one JSON object
per line, paths relative to it; the modalities named in one row are paired, rows sharing
a label are the same class). Then what you would run on real data: bind a new tower for
the other modality against the images, and evaluate it on your held-out rows.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import anybind
from anybind.eval import evaluate_bind
from anybind.data import read_manifest

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--run", type=Path, default=Path("runs/quickstart"), help="folder with world/ (your files come from it) and bind/")
parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "my-data", help="where to write your data")
parser.add_argument("--modality", help="the modality to bind against images (default: video, else another the world has)")
parser.add_argument("--per-label", type=int, default=24, help="training files per label and modality (a quarter as many held out)")
parser.add_argument("--steps", type=int, default=60, help="training steps per tower")
args = parser.parse_args()

world = read_manifest(args.run / "world")
others = [m for m in world.modalities() if m != "image"]
args.modality = args.modality or ("video" if "video" in others else others[0] if others else "")
if args.modality not in others:
    sys.exit(f"--modality {args.modality!r}: pick one of {', '.join(others) or '(none)'} "
             f"(the modalities of {world.path} other than image)")

# 1. Your files and their manifest: images with a label and a caption, and files of the other modality.
rows = []
for split, count in (("train", args.per_label), ("test", max(2, args.per_label // 4))):
    for label in world.labels:
        same = [r for r in world.select(split, has=("label",)) if r["label"] == label]
        picked = [r for r in same if "image" in r][:count] + [r for r in same if "image" not in r and args.modality in r][:count]
        for r in picked:
            row = {"split": split, "label": label, **({"text": r["text"]} if "text" in r else {})}
            for modality in ("image", args.modality):
                if modality in r:  # an image and, e.g., its point cloud in one row are a pair
                    target = args.data / modality / Path(r[modality]).name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(r[modality], target)
                    row[modality] = f"{modality}/{target.name}"
            rows.append(row)
(args.data / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
(args.data / "world.json").write_text(json.dumps({"prompt": world.prompt}), encoding="utf-8")  # the zero-shot prompt
print(f"wrote {args.data / 'manifest.jsonl'}: {len(rows)} rows, e.g.")
for row in [rows[0]] + [r for r in rows[1:] if args.modality in r][:1]:
    print("  " + json.dumps(row))

# 2. Bind a tower for your files against images: start from a copy of the bound model (its image
#    tower stays frozen: the new tower learns to land where your images do; it never sees text).
#    With no bound model at all, the same command without --modality binds images to text first.
shutil.copytree(args.run / "bind", args.data / "bind", dirs_exist_ok=True)
command = ["train", "bind", "--manifest", str(args.data), "--out", str(args.data / "bind"), "--modality", args.modality,
           "--steps", str(args.steps), "--batch-size", "32", "--retrain"]  # --retrain: replace the copied tower
print("\n$ anybind " + " ".join(command))
subprocess.run([sys.executable, "-m", "anybind", *command], check=True)

# 3. Evaluate on your held-out rows (the same as: anybind eval bind --model DIR/bind --manifest DIR).
results = evaluate_bind(anybind.load(args.data / "bind"), args.data)
print(f"\n{'MODALITY':<11} {'ZERO-SHOT':>9} {'R@1':>6} {'PROBE':>6} {'N':>4}")
for modality, r in results.items():
    print(f"{modality:<11} {r['zero_shot_top1']:>9.3f} {r['retrieval_r1']:>6.3f} {r['linear_probe']:>6.3f} {r['n_test']:>4}"
          + ("  (emergent: never saw text)" if r["emergent"] else ""))
print(f"\nyour {args.modality} tower: {args.data / 'bind' / args.modality}")
