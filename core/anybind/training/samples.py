"""Reading a manifest's files for training: every row loaded and preprocessed once, bad rows
skipped (and reported) or, with ``on_bad_row="stop"``, an error naming the file and the row."""

from __future__ import annotations

from anybind import plugins
from anybind.data.manifest import Manifest
from anybind.errors import InputError
from anybind.training.trainer import MetricsLog, say


def load_samples(manifest: Manifest, rows: list[dict], modality: str, encoder, settings, accelerator, bad_log: MetricsLog):
    """Load + preprocess every row's file once. ``settings`` has ``on_bad_row`` (``skip``: bad rows are
    reported and left out; ``stop``: the first one is an error) and ``progress`` (show a bar)."""
    from tqdm.auto import tqdm

    spec = plugins.get_modality(modality)
    kept, samples = [], []
    for row in tqdm(rows, desc=f"load {modality}", unit="file", leave=False, disable=not (settings.progress and accelerator.is_main_process)):
        path = row[modality]
        try:
            raw = spec.load(path) if spec.reads_files else path
            sample = encoder.preprocess(raw)
        except (InputError, FileNotFoundError) as exc:
            if isinstance(exc, FileNotFoundError):
                problem = "file not found"
            else:
                problem = exc.problem if exc.path == str(path) else str(exc)
            where = f"{manifest.path}:{row['_line']}"
            if settings.on_bad_row == "stop":
                raise InputError(path, f"{problem} (manifest row {where}; use --on-bad-row skip to skip bad rows)") from None
            say(accelerator, f"skipping {path}: {problem} ({where})")
            bad_log.write(file=str(path), problem=problem, manifest_row=where, modality=modality)
            continue
        kept.append(row)
        samples.append(sample)
    if not samples:
        raise InputError(manifest.path, f"no usable {modality} rows in the training split")
    return kept, samples
