"""``anybind quickstart``: every stage on the sample world, then an interleaved demo.

    world → bind → decoder → align-in → align-out → instruct → demo → eval

The decoder trains in a background process (one thread) beside bind and align-in, which
use the other core meanwhile: its small convolutions gain little from a second thread, so
the two together finish sooner than one after the other. align-out, the first stage that
needs the decoder, waits for it. While the world is built (which leaves a core mostly idle)
another background process loads the LM backbone once, so that a backbone which converts
its weights on first use (SmolLM2 from its GGUF) is ready in the cache when align-in starts.

Everything goes under one folder (default ``runs/quickstart``)::

    world/  bind/  decoder/  chat/         what each stage writes (see its command)
    demo.html                              the demo conversation, images inline
    demo-<n>.png                           the demo's images as files
    metrics.json                           each stage's time, and every held-out metric

A stage already complete is skipped, and an interrupted stage resumes from its last
mid-stage checkpoint, so running the quickstart again continues where it stopped. The demo
runs before the evaluation so the first interleaved answer comes as early as possible.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from anybind.errors import AnybindError
from anybind.persistence import write_json_atomic, write_text_atomic

STAGES = ("world", "decoder", "bind", "align-in", "align-out", "instruct", "demo", "eval")

#: The demo conversation: a spoken digit, a follow-up that draws it, then text and an image.
DEMO = (
    ("Which digit is spoken here?", "audio"),
    ("Now draw it.", None),
    ("Write one sentence about the number four, then draw it.", None),
)

#: The targets the issues set, checked in the summary: (metric path, at least).
TARGETS = {
    "bind zero-shot (emergent)": 0.90,
    "bind zero-shot (image)": 0.95,
    "chat (every modality)": 0.90,
    "generated digits correct": 0.90,
    "write-then-draw both and agree": 0.90,
}


@dataclass
class Quickstart:
    out: Path
    backbone: str = "smollm2"  # any backbone reference, e.g. hf:/path/to/causal-lm
    started_at: float | None = None  # wall-clock start (e.g. before installation, from make)
    progress: bool = True
    background_decoder: bool | None = None  # None: when there are at least 2 CPU cores and no GPU
    decoder_options: tuple[str, ...] = ()  # extra `anybind train decoder` options, e.g. ("--set", "vae_steps=50")
    record: dict = field(default_factory=dict)
    _job: subprocess.Popen | None = field(default=None, repr=False)
    _job_began: float = field(default=0.0, repr=False)
    _job_ended: float | None = field(default=None, repr=False)
    _warm: subprocess.Popen | None = field(default=None, repr=False)  # the backbone's first load
    _threads: int | None = field(default=None, repr=False)  # the stages' threads before the background job

    @property
    def world(self) -> Path:
        return self.out / "world"

    @property
    def bind(self) -> Path:
        return self.out / "bind"

    @property
    def decoder(self) -> Path:
        return self.out / "decoder"

    @property
    def chat(self) -> Path:
        return self.out / "chat"

    # --- stages: each returns (ran, note) -------------------------------------------------------

    def stage_world(self):
        from anybind.world import build_world

        self.warm_backbone()
        if (self.world / "manifest.jsonl").is_file():
            return False, "already built"
        build_world(self.world)
        return True, ""

    def stage_bind(self):
        from anybind.bind import BindSettings, train_bind

        results = train_bind(self.world, self.bind, settings=BindSettings(progress=self.progress))
        return bool(results), ", ".join(f"{r['modality']} {r['seconds']:.0f}s" for r in results) or "already trained"

    def stage_decoder(self):
        if (self.decoder / "anybind.json").is_file():
            return False, "already trained"
        command = [sys.executable, "-m", "anybind", "train", "decoder", "--manifest", str(self.world),
                   "--out", str(self.decoder), *self.decoder_options]
        if not self._in_background():
            subprocess.run(command, check=True)
            return True, ""
        import torch

        log = open(self.decoder_log, "ab")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self._job = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        self._job_began = time.time()
        self._threads = torch.get_num_threads()
        torch.set_num_threads(max(1, self._threads - 1))  # the decoder has one core, the stages the rest
        from anybind.trainer import STEP_HOOKS

        STEP_HOOKS.append(self._take_back_cores)
        return None, f"training in the background beside bind and align-in (log: {self.decoder_log})"

    @property
    def decoder_log(self) -> Path:
        return self.out / "decoder.log"

    def _in_background(self) -> bool:
        if self.background_decoder is not None:
            return self.background_decoder
        import torch

        return (os.cpu_count() or 1) >= 2 and not torch.cuda.is_available()

    def _take_back_cores(self) -> None:
        """Once the background decoder has ended, the stages get every core again."""
        if self._job is None or self._job.poll() is None:
            return
        if self._job_ended is None:
            self._job_ended = time.time()
        if self._threads is not None:
            import torch

            from anybind.trainer import STEP_HOOKS

            torch.set_num_threads(self._threads)
            self._threads = None
            if self._take_back_cores in STEP_HOOKS:
                STEP_HOOKS.remove(self._take_back_cores)

    def join_decoder(self) -> None:
        """Wait for the background decoder; fail with its log's end if it failed."""
        if self._job is None:
            return
        from tqdm.auto import tqdm

        job = self._job
        with tqdm(desc="waiting for the decoder (background)", unit="s", disable=not self.progress, leave=False) as bar:
            waited = time.time()
            while job.poll() is None:
                time.sleep(1.0)
                bar.update(1)
        self._take_back_cores()
        self._job = None
        seconds = (self._job_ended or time.time()) - self._job_began
        if job.returncode != 0:
            tail = self.decoder_log.read_text(errors="replace").replace("\r", "\n").strip().splitlines()[-5:]
            raise AnybindError(f"decoder training failed (exit {job.returncode}); the end of {self.decoder_log}:\n  "
                               + "\n  ".join(tail))
        self.record.setdefault("stages", {})["decoder"] = {
            "seconds": round(seconds, 1), "ran": True,
            "note": f"in the background beside bind and align-in; align-out waited {time.time() - waited:.0f}s for it"}

    def stop_decoder(self) -> None:
        """Stop a background decoder (an interrupted quickstart): it resumes from its checkpoint next time."""
        if self._job is not None and self._job.poll() is None:
            self._job.terminate()
            try:
                self._job.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._job.kill()
        self._take_back_cores()
        self._job = None

    def warm_backbone(self) -> None:
        """Load the backbone once in a background process (one thread), unless align-in is done:
        a backbone that converts its weights on first use then finds them cached."""
        if self._warm is not None or (self.chat / "projectors" / "image" / "training.json").is_file():
            return
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "backbone.log", "ab") as log:
            self._warm = subprocess.Popen(
                [sys.executable, "-c", "import sys; from anybind.lm import load_backbone; load_backbone(sys.argv[1])",
                 self.backbone], stdout=log, stderr=subprocess.STDOUT, env=env)

    def join_backbone(self) -> None:
        """Wait for the background load; if it failed, align-in's own load reports why."""
        if self._warm is not None:
            self._warm.wait()
            self._warm = None

    def stage_align_in(self):
        from anybind.align import AlignSettings, train_align_in

        self.join_backbone()
        r = train_align_in(self.world, self.bind, self.chat, backbone=self.backbone,
                           settings=AlignSettings(progress=self.progress))
        return not r.get("skipped"), "already trained" if r.get("skipped") else f"{r['steps']} steps"

    def stage_align_out(self):
        from anybind.align_out import AlignOutSettings, train_align_out

        self.join_decoder()

        r = train_align_out(self.world, self.chat, str(self.decoder), AlignOutSettings(progress=self.progress))
        return not r.get("skipped"), "already trained" if r.get("skipped") else f"mse {r.get('mse', float('nan')):.3f}"

    def stage_instruct(self):
        from anybind.instruct import InstructSettings, train_instruct

        r = train_instruct(self.world, self.chat, InstructSettings(progress=self.progress))
        return not r.get("skipped"), "already trained" if r.get("skipped") else f"ce {r.get('ce', float('nan')):.3f}"

    def stage_demo(self):
        """The demo conversation, streamed to the terminal and written to ``demo.html``."""
        import io
        import sys

        import anybind
        from anybind.chat import ChatSession
        from anybind.generation import SamplingOptions
        from anybind.render import HtmlRenderer, TerminalRenderer
        from anybind.world import read_manifest

        manifest = read_manifest(self.world)
        model = anybind.load(self.chat)
        session = ChatSession(model, SamplingOptions(max_new_tokens=96))  # short answers: one sentence, a drawing
        page = io.StringIO()
        html = HtmlRenderer(page)
        terminal = TerminalRenderer(sys.stdout, images_dir=self.out, prefix="demo")
        first_image = None
        for prompt, modality in DEMO:
            attachments = []
            if modality:
                rows = [r for r in manifest.select("test", has=(modality,)) if r.get("label") == "seven"]
                attachments = [rows[0][modality]] if rows else []
            shown = prompt + "".join(f" [{Path(a).name}]" for a in attachments)
            print(f"\nyou> {shown}")
            html.begin_turn(shown)
            for event in session.ask(prompt, attachments):
                getattr(terminal, f"on_{event.type}")(event)
                getattr(html, f"on_{event.type}")(event)
                sys.stdout.flush()
                if event.type == "image" and first_image is None:
                    first_image = time.time()
        html.close()
        write_text_atomic(self.out / "demo.html", page.getvalue())
        if first_image is not None:
            self.record["first_image_at"] = first_image
        return True, f"{self.out / 'demo.html'}"

    def stage_eval(self):
        import anybind
        from anybind.evaluate import evaluate_bind, evaluate_chat, evaluate_generate

        previous = self.record.get("eval")
        if previous and not self.record.get("trained_this_run"):
            return False, "already evaluated"
        chat = anybind.load(self.chat)
        results = {"bind": evaluate_bind(anybind.load(self.bind), self.world),
                   "chat": evaluate_chat(chat, self.world, progress=self.progress),
                   "generate": evaluate_generate(self.world, decoder=chat.decoder, model=chat, progress=self.progress)}
        self.record["eval"] = results
        return True, ""

    # --- the run ----------------------------------------------------------------------------

    def run(self) -> dict:
        from tqdm.auto import tqdm

        self.out.mkdir(parents=True, exist_ok=True)
        metrics_path = self.out / "metrics.json"
        if metrics_path.is_file():
            self.record = json.loads(metrics_path.read_text())
        self.record.pop("trained_this_run", None)
        self.record.pop("first_image_at", None)
        began = time.time()
        stages = self.record.setdefault("stages", {})
        bar = tqdm(STAGES, desc="quickstart", unit="stage", disable=not self.progress)
        try:
            for name in bar:
                bar.set_postfix_str(name)
                tqdm.write(f"\n== quickstart: {name} ==")
                start = time.time()
                ran, note = getattr(self, "stage_" + name.replace("-", "_"))()
                seconds = time.time() - start
                if ran is None:  # started in the background: its time is recorded when it is joined
                    ran, seconds = True, None
                if ran and name not in ("demo", "eval"):
                    self.record["trained_this_run"] = True
                stages[name] = {"seconds": round(seconds, 1) if ran and seconds is not None
                                else stages.get(name, {}).get("seconds"), "ran": ran, "note": note}
                write_json_atomic(metrics_path, self.record)
        finally:
            self.stop_decoder()
            if self._warm is not None and self._warm.poll() is None:
                self._warm.terminate()
            self._warm = None
        origin = self.started_at or began
        if "first_image_at" in self.record:
            self.record["first_interleaved_answer_seconds"] = round(self.record.pop("first_image_at") - origin, 1)
        self.record["seconds"] = round(time.time() - origin, 1)
        self.record["summary"] = summary(self.record)
        self.record.pop("trained_this_run", None)
        write_json_atomic(metrics_path, self.record)
        return self.record


def summary(record: dict) -> dict[str, float]:
    """The headline numbers, named as in :data:`TARGETS`."""
    ev = record.get("eval") or {}
    out: dict[str, float] = {}
    bind = ev.get("bind", {})
    emergent = [r["zero_shot_top1"] for r in bind.values() if r.get("emergent")]
    if emergent:
        out["bind zero-shot (emergent)"] = min(emergent)
    if "image" in bind:
        out["bind zero-shot (image)"] = bind["image"]["zero_shot_top1"]
    chat = ev.get("chat", {})
    if chat:
        out["chat (every modality)"] = min(max(r.get("image_projector", 0), r.get("own_projector") or 0) for r in chat.values())
    generate = ev.get("generate", {})
    if "chat_draw" in generate:
        out["generated digits correct"] = generate["chat_draw"]["accuracy"]
    if "chat_write_and_draw" in generate:
        out["write-then-draw both and agree"] = generate["chat_write_and_draw"]["both_and_agree"]
    return out
