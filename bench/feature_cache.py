"""The feature cache of a frozen pretrained trunk: one epoch over the sample world's training
images with the trunk run on every batch, against epochs that read its cached outputs.

    .venv/bin/python bench/feature_cache.py [--trunk hf:DIR] [--manifest runs/quickstart/world] [--epochs 3]

Without --trunk, a small random ViT (32x32 images, patch 4, width 64, 4 layers: the size of
anybind's own `arch=vit` image trunk) is written with save_pretrained and used; the time does
not depend on its weights. Each epoch trains the tower's head for one pass over the rows in
batches of 128, as `anybind train bind --train-trunk image=frozen` does. Prints seconds per
epoch and the speed-up of a cached epoch (target >= 5x).
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from anybind.data import read_manifest
from anybind.models.feature_cache import FeatureCache
from anybind.models.space import Tower
from anybind_image.encoder import load_image

parser = argparse.ArgumentParser()
parser.add_argument("--trunk", help="hf:DIR of an image checkpoint (default: a small random ViT).")
parser.add_argument("--manifest", default="runs/quickstart/world")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--batch-size", type=int, default=128)
args = parser.parse_args()
work = Path(tempfile.mkdtemp(prefix="feature-cache-"))
trunk = args.trunk
if trunk is None:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    ViTModel(ViTConfig(image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                       intermediate_size=128), add_pooling_layer=False).save_pretrained(work / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(work / "vit")
    trunk = f"hf:{work / 'vit'}"

rows = read_manifest(args.manifest).select("train", has=("image",))
paths = [r["image"] for r in rows]
tower = Tower.create("image", 128, {"trunk": trunk, "train_trunk": "frozen"})
samples = [tower.encoder.preprocess(load_image(p)) for p in paths]
targets = F.normalize(torch.randn(len(paths), 128), dim=-1)
optimizer = torch.optim.AdamW([p for p in tower.parameters() if p.requires_grad], lr=1e-3)
print(f"{len(paths)} training images, trunk {trunk}, {torch.get_num_threads()} threads")


def epoch(batch_of) -> float:
    began = time.time()
    order = torch.randperm(len(paths))
    for start in range(0, len(order), args.batch_size):
        index = order[start:start + args.batch_size]
        loss = (1 - (tower(**batch_of(index)) * targets[index]).sum(-1)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.time() - began


tower.train()
uncached = [epoch(lambda i: tower.encoder.collate([samples[j] for j in i])) for _ in range(args.epochs)]
cache_began = time.time()
features = FeatureCache(work / "cache", tower.encoder).pooled(paths, samples, batch_size=args.batch_size)
first = time.time() - cache_began
cached = [epoch(lambda i: {"pooled": features[i]}) for _ in range(args.epochs)]
reread = time.time()
FeatureCache(work / "cache", tower.encoder).pooled(paths, samples)  # a later stage or run: read back from disk
reread = time.time() - reread
per_uncached, per_cached = min(uncached), min(cached)
print(f"epoch, trunk on every batch:        {per_uncached:.2f} s (best of {args.epochs})")
print(f"filling the cache (once per file):  {first:.2f} s")
print(f"epoch, cached outputs:              {per_cached:.3f} s (best of {args.epochs})")
print(f"reading the cache back (next run):  {reread:.2f} s (hashing {len(paths)} files included)")
print(f"speed-up per epoch after the first: {per_uncached / per_cached:.0f}x (target >= 5x)")
