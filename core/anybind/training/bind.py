"""Stage ``bind``: train the towers into one space, with image as the binding modality.

1. text ↔ image: the text trunk (MiniLM) is frozen and only its head trains (LiT); the
   image trunk and head train against it with symmetric InfoNCE.
2. every other modality X ↔ image: X's tower trains against *frozen* image embeddings of
   its paired images. X never sees text; X → text is emergent and is what we measure.

Each modality's tower is written to ``OUT/<modality>/`` when it finishes (so a finished
modality is never retrained or rewritten), mid-stage progress to ``OUT/.progress/``; the
directory is locked while a run writes it (:mod:`anybind.training.stage`).
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anybind import plugins
from anybind.data.manifest import Manifest, read_manifest
from anybind.errors import AnybindError, InputError
from anybind.specs import BINDING_MODALITY, attachable
from anybind.models.feature_cache import FeatureCache, caches
from anybind.models.losses import BindLoss
from anybind.models.space import Tower, update_bound_index
from anybind.persistence import CONFIG_NAME, read_config
from anybind.training.samples import load_samples
from anybind.training.settings import BindSettings
from anybind.training.stage import Stage
from anybind.training.trainer import LoopSettings, MetricsLog, make_accelerator, say
TRAIN_DEFAULTS = {"steps": 300, "lr": 1e-3, "batch_size": 128, "weight_decay": 0.05}


def _train_settings(modality: str, settings: BindSettings) -> dict[str, Any]:
    merged = {**TRAIN_DEFAULTS, **dict(plugins.get_modality(modality).train)}
    for key in ("steps", "batch_size", "lr"):
        if getattr(settings, key) is not None:
            merged[key] = getattr(settings, key)
    return merged


class _Stage(nn.Module):
    """The trainable parts of one binding run, as one module for Accelerate/DDP."""

    def __init__(self, tower: Tower, loss: BindLoss, text_head: nn.Module | None = None):
        super().__init__()
        self.tower, self.loss, self.text_head = tower, loss, text_head

    def forward(self, batch: dict[str, torch.Tensor], target: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
        """Loss of one batch; ``target`` is frozen text features (through the head) or image embeddings."""
        embedding = self.tower(**batch)  # (B, D)
        if self.text_head is not None:
            target = F.normalize(self.text_head(target), dim=-1)
        return self.loss(embedding, target, groups, groups)


def _stage(out: Path, modality: str, accelerator) -> Stage:
    return Stage("bind", modality, out, done=out / modality / "training.json", progress=out / ".progress" / modality,
                 metrics=out / "metrics.jsonl", accelerator=accelerator)


def _loop(stage: Stage, module: _Stage, n_rows: int, step_fn, hp: dict[str, Any], settings: BindSettings,
          rngs: dict | None = None) -> float:
    loop = LoopSettings(steps=int(hp["steps"]), batch_size=int(hp["batch_size"]), lr=float(hp["lr"]),
                        weight_decay=float(hp["weight_decay"]), seed=settings.seed, save_every=settings.save_every,
                        progress=settings.progress)
    return stage.run_loop(module=module, n_rows=n_rows, step_fn=step_fn, loop=loop, rngs=rngs,
                          report=lambda m: {"temperature": m.loss.temperature})


def _labels_to_groups(rows: list[dict], labels: list[str]) -> torch.Tensor | None:
    if not all("label" in r for r in rows):
        return None
    index = {label: i for i, label in enumerate(labels)}
    for r in rows:
        index.setdefault(r["label"], len(index))
    return torch.tensor([index[r["label"]] for r in rows])


def _frozen_text_features(text_tower: Tower, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """Pooled outputs of the frozen text trunk, computed once: (N, 384)."""
    encoder = text_tower.encoder
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = encoder.collate([encoder.preprocess(t) for t in texts[start : start + batch_size]])
            out.append(encoder(**batch).pooled())
    return torch.cat(out)


def _to(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def tower_config(modality: str, settings: BindSettings, manifest: Manifest | None = None) -> dict:
    """The encoder settings a new tower of ``modality`` starts from: how the world says its samples
    read (``world.json``'s ``encoders``), and its pretrained trunk, if one was given."""
    fields = {f.name for f in dataclasses.fields(plugins.get_modality(modality).encoder_class().Config)}
    config = dict(manifest.encoders.get(modality) or {}) if manifest is not None else {}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise InputError(manifest.root / "world.json", f"encoders.{modality}: the {modality} encoder "
                         f"({plugins.modality_owner(modality)}) has no setting {', '.join(map(repr, unknown))}")
    trunk, mode = settings.trunks.get(modality), settings.train_trunks.get(modality)
    if trunk is None:
        if mode is not None:
            raise AnybindError(f"--train-trunk {modality}={mode} needs a pretrained trunk: --trunk {modality}=REF")
        return config
    if "trunk" not in fields:
        raise AnybindError(f"the {modality} plugin ({plugins.modality_owner(modality)}) cannot start its tower "
                           "from a pretrained trunk")
    config["trunk"] = trunk
    if mode is not None:
        if "train_trunk" not in fields:
            raise AnybindError(f"the {modality} trunk is always frozen (only its head trains); leave out --train-trunk")
        config["train_trunk"] = mode
    return config


def _batches(tower: Tower, modality: str, rows: list[dict], samples: list, out: Path, settings: BindSettings,
             accelerator):
    """How a step gets its batch: a frozen pretrained trunk's pooled outputs, computed once per file
    (:class:`FeatureCache`), else the samples collated and augmented."""
    encoder = tower.encoder
    if settings.feature_cache and caches(encoder):
        cache = FeatureCache(out / ".features", encoder, write=accelerator.is_main_process)
        tower.to(accelerator.device)
        features = cache.pooled([r[modality] for r in rows], samples, device=accelerator.device,
                                progress=settings.progress and accelerator.is_main_process)
        say(accelerator, f"{modality}: the frozen trunk's outputs: {cache.hits} from the feature cache, "
                         f"{cache.misses} computed ({cache.folder})")
        return lambda indices: {"pooled": features[indices].to(accelerator.device)}
    return lambda indices: _to(encoder.augment(encoder.collate([samples[i] for i in indices])), accelerator.device)


def adopt_space(out: Path, settings: BindSettings, accelerator) -> dict:
    """ImageBind's recipe: a pretrained image-text space (a CLIP directory) is the space. Its image
    and text towers arrive aligned and stay frozen; nothing trains here, and every other
    modality then binds to its image tower."""
    image_tower = Tower.create(BINDING_MODALITY, None, {"trunk": settings.space, "train_trunk": "frozen", "projection": True})
    text_tower = Tower.create("text", None, {"trunk": settings.space, "projection": True})
    if image_tower.embed_dim != text_tower.embed_dim:
        raise AnybindError(f"{settings.space}: its image ({image_tower.embed_dim}-d) and text ({text_tower.embed_dim}-d) "
                           "embeddings are not one space")
    say(accelerator, f"bind image↔text: the frozen {image_tower.embed_dim}-d space of {settings.space}")
    run = _stage(out, BINDING_MODALITY, accelerator)

    def save():
        text_tower.save_pretrained(out / "text")
        image_tower.save_pretrained(out / BINDING_MODALITY)

    _finish(run, out, save, {"space": settings.space}, 0.0, 0, trained=("text", BINDING_MODALITY),
            embed_dim=image_tower.embed_dim)
    return {"modality": BINDING_MODALITY, "seconds": 0.0, "rows": 0}


def bind_image_text(manifest: Manifest, out: Path, settings: BindSettings, accelerator, bad_log) -> dict:
    if settings.space:
        return adopt_space(out, settings, accelerator)
    hp = _train_settings(BINDING_MODALITY, settings)
    rows = manifest.select("train", has=(BINDING_MODALITY, "text"))
    if not rows:
        raise InputError(manifest.path, "no training rows with both 'image' and 'text' to bind image to text")
    image_tower = Tower.create(BINDING_MODALITY, settings.embed_dim, tower_config(BINDING_MODALITY, settings, manifest))
    text_tower = Tower.create("text", settings.embed_dim, tower_config("text", settings, manifest))
    rows, samples = load_samples(manifest, rows, BINDING_MODALITY, image_tower.encoder, settings, accelerator, bad_log)
    say(accelerator, f"bind image↔text: {len(rows)} pairs, {hp['steps']} steps, batch {hp['batch_size']}")
    text_features = _frozen_text_features(text_tower, [r["text"] for r in rows])
    groups = _labels_to_groups(rows, manifest.labels)
    stage = _Stage(image_tower, BindLoss(), text_head=text_tower.head)
    batch_of = _batches(image_tower, BINDING_MODALITY, rows, samples, out, settings, accelerator)

    def step_fn(model, indices):
        batch = batch_of(indices)
        g = groups[indices].to(accelerator.device) if groups is not None else None
        return model(batch, text_features[indices].to(accelerator.device), g)

    run = _stage(out, BINDING_MODALITY, accelerator)
    seconds = _loop(run, stage, len(rows), step_fn, hp, settings)

    def save():
        text_tower.save_pretrained(out / "text")
        image_tower.save_pretrained(out / BINDING_MODALITY)

    _finish(run, out, save, hp, seconds, len(rows), trained=("text", BINDING_MODALITY), embed_dim=image_tower.embed_dim)
    return {"modality": BINDING_MODALITY, "seconds": seconds, "rows": len(rows)}


def bind_to_images(modality: str, manifest: Manifest, out: Path, settings: BindSettings, accelerator, bad_log) -> dict:
    """Train X's tower against frozen image embeddings (instance pairs, or same-label images)."""
    hp = _train_settings(modality, settings)
    image_tower = Tower.from_pretrained(out / BINDING_MODALITY).eval().requires_grad_(False)
    image_rows = manifest.select("train", has=(BINDING_MODALITY,))
    x_rows = [r for r in manifest.select("train", has=(modality,)) if BINDING_MODALITY in r or "label" in r]
    if not x_rows:
        raise InputError(manifest.path, f"no training rows pair {modality} with an image or a label")
    space_dim = int(read_config(out)["embed_dim"])  # the space the image tower made (its own, or --space's)
    config = tower_config(modality, settings, manifest)
    tower = Tower.create(modality, space_dim, config)
    if hp.get("init_from") and not config.get("trunk"):
        source = Tower.from_pretrained(out / hp["init_from"]) if hp["init_from"] != BINDING_MODALITY else image_tower
        pretrained = getattr(source.encoder.config, "trunk", "")
        if pretrained:  # a pretrained trunk of another shape: nothing to copy
            say(accelerator, f"bind {modality}: its trunk starts from scratch (the {hp['init_from']} tower's is the "
                             f"pretrained {pretrained}; --trunk {modality}={pretrained} reads with it)")
        else:
            tower.encoder.init_from(source.encoder)
    x_rows, samples = load_samples(manifest, x_rows, modality, tower.encoder, settings, accelerator, bad_log)

    # Frozen targets: every training image embedded once.
    image_rows, image_samples = load_samples(manifest, image_rows, BINDING_MODALITY, image_tower.encoder,
                                             BindSettings(on_bad_row="skip", progress=settings.progress), accelerator, bad_log)
    image_emb = image_tower.embed_samples(image_samples, batch_size=256)  # (N_img, D)
    by_id = {r["id"]: i for i, r in enumerate(image_rows)}
    by_label: dict[str, list[int]] = {}
    for i, r in enumerate(image_rows):
        by_label.setdefault(r.get("label"), []).append(i)
    own_image = [by_id.get(r["id"]) if BINDING_MODALITY in r else None for r in x_rows]
    missing = [r for r, own in zip(x_rows, own_image) if own is None and r.get("label") not in by_label]
    if missing:
        raise InputError(manifest.path, f"row at line {missing[0]['_line']}: its image was unusable and no image shares its label")
    groups = _labels_to_groups(x_rows, manifest.labels)
    image_tower.to(accelerator.device)
    say(accelerator, f"bind {modality}↔image: {len(x_rows)} rows, {hp['steps']} steps, batch {hp['batch_size']} (never sees text)")
    stage = _Stage(tower, BindLoss())
    batch_of = _batches(tower, modality, x_rows, samples, out, settings, accelerator)
    pick = random.Random(settings.seed + 1 + accelerator.process_index)

    def step_fn(model, indices):
        batch = batch_of(indices)
        target_rows = [own_image[i] if own_image[i] is not None else pick.choice(by_label[x_rows[i]["label"]]) for i in indices]
        g = groups[indices].to(accelerator.device) if groups is not None else None
        return model(batch, image_emb[target_rows].to(accelerator.device), g)

    run = _stage(out, modality, accelerator)
    seconds = _loop(run, stage, len(x_rows), step_fn, hp, settings, rngs={"targets": pick})
    _finish(run, out, lambda: tower.save_pretrained(out / modality), hp, seconds, len(x_rows), trained=(modality,),
            embed_dim=tower.embed_dim)
    return {"modality": modality, "seconds": seconds, "rows": len(x_rows)}


def _finish(run: Stage, out: Path, save, hp: dict, seconds: float, rows: int, trained: tuple[str, ...],
            embed_dim: int) -> None:
    """Save the towers, record how they were trained, and list them in the model index."""
    run.finish({"steps": hp.get("steps", 0), "seconds": round(seconds, 2), "rows": rows, "hyperparameters": hp}, save)
    if run.is_main:
        update_bound_index(out, embed_dim, trained)


def is_trained(out: Path, modality: str) -> bool:
    return (out / modality / "training.json").is_file()


def train_bind(manifest_path: Path | str, out: Path | str, modalities: list[str] | None = None,
               settings: BindSettings | None = None, retrain: bool = False) -> list[dict]:
    """Bind ``modalities`` (default: every installed one the manifest has) into ``out``."""
    settings = settings or BindSettings()
    manifest = read_manifest(manifest_path)
    out = Path(out)
    accelerator = make_accelerator()
    torch.manual_seed(settings.seed)
    wanted = _wanted(manifest, modalities)
    for modality in {**settings.trunks, **settings.train_trunks}:  # every trunk option is checked before any training
        tower_config(modality, settings)
    existing = read_config(out).get("embed_dim") if (out / CONFIG_NAME).is_file() else None
    if existing and int(existing) != settings.embed_dim:  # new towers join the space already there
        say(accelerator, f"{out}: its space is {existing}-d; new towers are made {existing}-d")
        settings = dataclasses.replace(settings, embed_dim=int(existing))
    bad_log = MetricsLog(out / "bad_rows.jsonl", enabled=accelerator.is_main_process)
    results = []
    with _stage(out, BINDING_MODALITY, accelerator).lock():
        if wanted and (retrain and BINDING_MODALITY in wanted or not is_trained(out, BINDING_MODALITY)):
            results.append(bind_image_text(manifest, out, settings, accelerator, bad_log))
            accelerator.wait_for_everyone()
        elif BINDING_MODALITY in wanted:
            say(accelerator, f"bind {BINDING_MODALITY}: already trained in {out / BINDING_MODALITY} (use --retrain to train again)")
        for m in wanted:
            if m == BINDING_MODALITY:
                continue
            if is_trained(out, m) and not retrain:
                say(accelerator, f"bind {m}: already trained in {out / m} (use --retrain to train again)")
                continue
            results.append(bind_to_images(m, manifest, out, settings, accelerator, bad_log))
            accelerator.wait_for_everyone()
    return results


def _wanted(manifest: Manifest, modalities: list[str] | None) -> list[str]:
    """The modalities to bind: those asked (each installed and in the manifest), else every installed one present."""
    wanted = modalities or attachable(manifest.modalities(), plugins.modalities())
    for m in wanted:
        plugins.get_modality(m)  # clear error if not installed
        if m not in manifest.modalities():
            raise InputError(manifest.path, f"has no {m!r} column to train on")
    return wanted
