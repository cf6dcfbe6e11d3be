"""The stage helper every training stage goes through: one owner of its output directory.

A stage writes one *part* of a model directory (a tower, a projector, an output, an
adapter). :class:`Stage` gives every stage the same life cycle:

1. :meth:`Stage.lock` takes an exclusive lock on the output directory (``DIR/.lock``): a
   second run into it stops at once with an error naming the directory and the process
   that holds it. The operating system drops the lock when that process ends, ``kill -9``
   included, so a stale lock never blocks a rerun.
2. :attr:`Stage.done` says whether the part is finished (its ``training.json`` exists): a
   finished part is skipped unless retrained.
3. :meth:`Stage.run_loop` runs :func:`anybind.training.trainer.run_loop` with the part's
   progress directory and the directory's metrics log: an interrupted stage resumes exactly.
4. :meth:`Stage.finish` saves the part, writes its ``training.json`` last and drops its progress.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from anybind.errors import AnybindError
from anybind.persistence import read_json, write_json_atomic
from anybind.training.trainer import MetricsLog, make_accelerator, run_loop

LOCK_NAME = ".lock"
# Locks this process holds, by directory: stages nest (bind's image then its other modalities).
_held: dict[Path, tuple[int, int]] = {}


class DirectoryLocked(AnybindError):
    """Another process is writing the directory."""


@contextmanager
def directory_lock(directory: Path):
    """Hold ``directory/.lock`` exclusively for the block (re-entrant within one process)."""
    directory = Path(directory).resolve()
    if directory in _held:
        fd, depth = _held[directory]
        _held[directory] = (fd, depth + 1)
        try:
            yield
        finally:
            _held[directory] = (fd, _held[directory][1] - 1)
        return
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DirectoryLocked(f"{directory}: another anybind process is writing here ({_holder(path)}); "
                              "wait for it to finish, stop it, or choose another output directory") from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                             "command": " ".join(sys.argv)}).encode())
    _held[directory] = (fd, 1)
    try:
        yield
    finally:
        if _held[directory][1] <= 1:
            del _held[directory]
            os.ftruncate(fd, 0)  # emptied while still held: the file names a holder only while one runs
            os.close(fd)  # releases the lock
        else:
            _held[directory] = (fd, _held[directory][1] - 1)


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        info = {}
    if not info:
        return "process unknown"
    return f"process {info.get('pid')} since {info.get('since')}: {info.get('command', '')}".strip()


class Stage:
    """One stage writing one part of a model directory (see the module docstring)."""

    def __init__(self, stage: str, part: str, directory: Path, done: Path, progress: Path,
                 metrics: Path | None = None, accelerator=None):
        self.stage, self.part = stage, part
        self.directory, self.done_file, self.progress = Path(directory), Path(done), Path(progress)
        self.accelerator = accelerator or make_accelerator()
        self.metrics = MetricsLog(metrics or self.directory / "metrics.jsonl", enabled=self.is_main)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @contextmanager
    def lock(self):
        """The output directory's lock, held by the main process (the other ranks are its helpers)."""
        if not self.is_main:
            yield self
            return
        with directory_lock(self.directory):
            yield self

    @property
    def done(self) -> bool:
        return self.done_file.is_file()

    def record(self) -> dict:
        """What the finished part recorded (its training.json)."""
        return read_json(self.done_file)

    def skipped(self) -> dict:
        print(f"{self.stage} {self.part}: already trained in {self.done_file.parent} (use --retrain to train again)")
        return {"skipped": True, **self.record(), "path": str(self.done_file.parent)}

    def run_loop(self, **kwargs) -> float:
        return run_loop(stage=self.stage, name=self.part, accelerator=self.accelerator, progress_dir=self.progress,
                        metrics=self.metrics, **kwargs)

    def finish(self, result: dict, save: Callable[[], None]) -> dict:
        """Save the part (main process), then its training.json (the done marker), then drop its progress."""
        if self.is_main:
            save()
            write_json_atomic(self.done_file, result)
            shutil.rmtree(self.progress, ignore_errors=True)
        return result
