"""Speak a digit, then find it in every other modality of the shared space.

    make quickstart                                   # once: trains runs/quickstart
    python demos/retrieve_across_modalities.py        # says "three" with espeak-ng
    python demos/retrieve_across_modalities.py --digit seven -k 5

The spoken word is embedded by the audio tower; each held-out image, video and point
cloud of the world by its own tower. All land in one space, so the nearest neighbours of
the recording are pictures, clips and clouds of the same digit, although the audio tower
was trained against images only and never saw a video, a point cloud or any text.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import anybind
from anybind.data import read_manifest

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--run", type=Path, default=Path("runs/quickstart"), help="folder with world/ and bind/")
parser.add_argument("--digit", default="three", help="the word to speak (a label of the world)")
parser.add_argument("-k", type=int, default=3, help="hits per modality")
args = parser.parse_args()

manifest = read_manifest(args.run / "world")
if args.digit not in manifest.labels:
    sys.exit(f"--digit {args.digit!r} is not a label of {manifest.path}; pick one of: {', '.join(manifest.labels)}")
model = anybind.load(args.run / "bind")

# 1. A real recording: espeak-ng speaks the word; without it, a held-out file of the world.
if shutil.which("espeak-ng"):
    query = Path(tempfile.mkdtemp()) / f"{args.digit}.wav"
    subprocess.run(["espeak-ng", "-w", str(query), args.digit], check=True)
    print(f"query: espeak-ng saying {args.digit!r} -> {query}")
else:
    row = next(r for r in manifest.select("test", has=("audio",)) if r.get("label") == args.digit)
    query = Path(row["audio"])
    print(f"query: espeak-ng is not installed (apt-get install espeak-ng); using a held-out recording instead: {query}")
query_vector = model.embed([query])[0]  # (D,), L2-normalised like every embedding

# 2. Its nearest held-out files, modality by modality (cosine similarity = dot product).
for modality in [m for m in model.modalities if m in manifest.modalities() and m != "text"]:
    rows = manifest.select("test", has=(modality, "label"))
    scores = model.embed([r[modality] for r in rows]) @ query_vector  # (N,)
    top = scores.topk(min(args.k, len(rows)))
    print(f"\n{modality} ({len(rows)} held-out files)")
    for score, i in zip(top.values.tolist(), top.indices.tolist()):
        hit = "✓" if rows[i]["label"] == args.digit else " "
        print(f"  {hit} {score:+.3f}  {rows[i]['label']:<6}  {Path(rows[i][modality]).name}")

# 3. And as text: which label's prompt ("a handwritten three") is closest? (emergent: audio never saw text)
if "text" in model.modalities:
    prompts = [manifest.prompt.format(label=label) for label in manifest.labels]
    scores = model.embed(prompts) @ query_vector
    best = scores.topk(min(args.k, len(prompts)))
    print("\ntext: " + ", ".join(f"{manifest.labels[i]} {s:+.3f}" for s, i in zip(best.values.tolist(), best.indices.tolist())))
