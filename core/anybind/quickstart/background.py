"""Jobs the quickstart runs in the background on one core, beside the stages on the others."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from anybind.errors import AnybindError

#: One thread for a background job: its small convolutions gain little from a second one.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class BackgroundJob:
    """A subprocess with its output in ``log``; while it runs, this process keeps one core fewer."""

    def __init__(self, name: str, command: list[str], log: Path, share_cores: bool = True):
        import torch

        self.name, self.log = name, Path(log)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **ONE_THREAD})
        self.began, self.ended = time.time(), None
        self._threads = None
        if share_cores:
            from anybind.training.trainer import STEP_HOOKS

            self._threads = torch.get_num_threads()
            torch.set_num_threads(max(1, self._threads - 1))  # the job has one core, the stages the rest
            STEP_HOOKS.append(self.poll)  # checked after every training step: the core comes back at once

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def poll(self) -> None:
        """Once the job has ended, note when, and give this process its cores back."""
        if self.running:
            return
        if self.ended is None:
            self.ended = time.time()
        if self._threads is not None:
            import torch

            from anybind.training.trainer import STEP_HOOKS

            torch.set_num_threads(self._threads)
            self._threads = None
            if self.poll in STEP_HOOKS:
                STEP_HOOKS.remove(self.poll)

    def join(self, progress: bool = False, until: Path | None = None) -> float:
        """Wait for the job (or only until it has written ``until``); returns the seconds waited.
        A failed job is an error quoting its log's end."""
        from tqdm.auto import tqdm

        waited = time.time()
        with tqdm(desc=f"waiting for the {self.name} (background)", unit="s", disable=not progress, leave=False) as bar:
            while self.running and not (until is not None and until.exists()):
                time.sleep(1.0)
                bar.update(1)
        self.poll()
        if self.running:
            return time.time() - waited
        if self.process.returncode != 0:
            tail = self.log.read_text(errors="replace").replace("\r", "\n").strip().splitlines()[-5:]
            raise AnybindError(f"{self.name} failed (exit {self.process.returncode}); the end of {self.log}:\n  "
                               + "\n  ".join(tail))
        return time.time() - waited

    @property
    def seconds(self) -> float:
        return (self.ended or time.time()) - self.began

    def stop(self) -> None:
        """Stop the job if it still runs (an interrupted quickstart); a stage job resumes next time."""
        if self.running:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.poll()
