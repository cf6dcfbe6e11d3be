"""``anybind quickstart``: every stage on the sample world, then an interleaved demo.

    world → decoder → bind → first align-in → first align-out → first instruct → demo
          → further decoders → further bind → align-in → align-out → instruct → whole demo → eval

The first interleaved answer comes from a *first model* (``first-chat/``): the full recipe's LM
stages, briefly (a quarter to a half of their steps; :data:`~anybind.quickstart.stages.FIRST_INSTRUCT`
and the others), making the one output it needs, images. Its decoder trains in a background process
(one thread) beside the first model's stages on the other core, and is the same decoder the full
model uses; align-out needs only the decoder's prompt encoder (its ``prompts.json``, written as its
training starts), and the demo waits for the decoder. The first model reads the towers its demo
needs (images, and speech which it attaches), the same the full model reads. After its demo the
full model trains: every further decoder (e.g. speech) in the background, every further tower,
then align-in, align-out for every output and instruct (two seeds) into ``chat/``, the model every
command reads by default and every evaluation scores; the demo runs again with it. While the world
is built (which leaves a core mostly idle) another background process loads the LM backbone once,
so that a backbone which converts its weights on first use (SmolLM2 from its GGUF) is ready in the
cache when align-in starts.

Everything goes under one run directory (:class:`anybind.layout.RunLayout`, default
``runs/quickstart``), plus ``demo.html`` (the demo conversation, outputs inline),
``demo-<n>.png`` / ``.wav`` and ``metrics.json`` (each stage's time, and every held-out metric).

A stage already complete is skipped, and an interrupted stage resumes from its last
mid-stage checkpoint, so running the quickstart again continues where it stopped.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from anybind.layout import RunLayout
from anybind.persistence import write_json_atomic
from anybind.quickstart import stages as stage_functions
from anybind.quickstart.background import BackgroundJob

STAGES = tuple(name for name, _ in stage_functions.STAGES)
#: Stages that train nothing: having run them, the evaluation still stands.
SHOWS_ONLY = ("demo", "whole demo", "eval")

#: The targets the issues set, checked in the summary: (metric, at least).
TARGETS = {
    "bind zero-shot (emergent)": 0.90,
    "bind zero-shot (image)": 0.95,
    "chat (every modality)": 0.90,
    "generated digits correct": 0.90,
    "write-then-draw both and agree": 0.90,
    "OOD zero-shot (image, video, pointcloud)": 0.80,
    "OOD zero-shot (audio)": 0.90,
    "OOD chat (every modality)": 0.80,
    "multi-turn (every behaviour)": 0.90,
    "text and every output agree": 0.90,
}
#: Each further output modality's (``{}``: its name), checked the same way.
OUTPUT_TARGETS = {"{} out: decoder from captions": 0.90, "{} out: asked through chat": 0.85}


def target(name: str) -> float | None:
    if name in TARGETS:
        return TARGETS[name]
    return next((v for k, v in OUTPUT_TARGETS.items() if name.endswith(k.format("").strip())), None)


@dataclass
class Quickstart:
    out: Path
    backbone: str = "smollm2"  # any backbone reference, e.g. hf:/path/to/causal-lm
    started_at: float | None = None  # wall-clock start (e.g. before installation, from make)
    progress: bool = True
    background_decoder: bool | None = None  # None: when there are at least 2 CPU cores and no GPU
    #: extra `anybind train decoder` options per decoder, e.g. {"sd": ("--set", "vae_steps=50")}
    decoder_options: dict[str, tuple[str, ...]] = field(default_factory=dict)
    record: dict = field(default_factory=dict)
    jobs: dict[str, BackgroundJob] = field(default_factory=dict, repr=False)
    shown: set[str] | None = field(default=None, repr=False)  # the full model's outputs, once a demo showed it

    @property
    def run(self) -> RunLayout:
        return RunLayout(self.out)

    def in_background(self) -> bool:
        if self.background_decoder is not None:
            return self.background_decoder
        import torch

        return (os.cpu_count() or 1) >= 2 and not torch.cuda.is_available()

    def run_stages(self) -> dict:
        """Run every stage (finished ones skip themselves); returns the record written to metrics.json."""
        from tqdm.auto import tqdm

        self.run.root.mkdir(parents=True, exist_ok=True)
        if self.run.metrics.is_file():
            self.record = json.loads(self.run.metrics.read_text())
        for key in ("trained_this_run", "first_output_at"):
            self.record.pop(key, None)
        began = time.time()
        bar = tqdm(stage_functions.STAGES, desc="quickstart", unit="stage", disable=not self.progress)
        try:
            for name, stage in bar:
                bar.set_postfix_str(name)
                tqdm.write(f"\n== quickstart: {name} ==")
                start = time.time()
                ran, note = stage(self)
                self._note(name, ran, None if ran is None else time.time() - start, note)
        finally:
            for job in self.jobs.values():
                job.stop()
            self.jobs.clear()
        origin = self.started_at or began
        first = self.record.pop("first_output_at", {})  # {modality: when the demo first made one}
        if first:
            self.record["first_interleaved_answer_seconds"] = round(min(first.values()) - origin, 1)
        if len(first) > 1:
            self.record["every_output_answer_seconds"] = round(max(first.values()) - origin, 1)
        self.record["seconds"] = round(time.time() - origin, 1)
        self.record["summary"] = summary(self.record)
        self.record.pop("trained_this_run", None)
        write_json_atomic(self.run.metrics, self.record)
        return self.record

    def _note(self, name: str, ran: bool | None, seconds: float | None, note: str) -> None:
        """Record one stage's outcome (``ran`` None: started in the background, timed when joined)."""
        stages = self.record.setdefault("stages", {})
        ran = True if ran is None else ran
        if ran and name not in SHOWS_ONLY:
            self.record["trained_this_run"] = True
        timed = round(seconds, 1) if ran and seconds is not None else stages.get(name, {}).get("seconds")
        stages[name] = {"seconds": timed, "ran": ran, "note": note}
        write_json_atomic(self.run.metrics, self.record)


def summary(record: dict) -> dict[str, float]:
    """The headline numbers, named as in :data:`TARGETS`."""
    ev = record.get("eval") or {}
    out: dict[str, float] = {}
    bind = ev.get("bind", {})
    emergent = [r["zero_shot_top1"] for r in bind.values() if r.get("emergent")]
    if emergent:
        out["bind zero-shot (emergent)"] = min(emergent)
    trained = [r["zero_shot_top1"] for r in bind.values() if not r.get("emergent")]
    if trained:
        out["bind zero-shot (image)"] = trained[0]
    chat = ev.get("chat", {})
    if chat:
        out["chat (every modality)"] = _chat_floor(chat)
    generate = ev.get("generate", {})
    if "chat_draw" in generate:
        out["generated digits correct"] = generate["chat_draw"]["accuracy"]
    if "chat_write_and_draw" in generate:
        out["write-then-draw both and agree"] = generate["chat_write_and_draw"]["both_and_agree"]
    for modality, r in ev.get("outputs", {}).items():
        names = [k.format(modality) for k in OUTPUT_TARGETS]
        if "decoder" in r:
            out[names[0]] = r["decoder"]["accuracy"]
        if "chat_draw" in r:
            out[names[1]] = r["chat_draw"]["accuracy"]
    if ev.get("together"):
        out["text and every output agree"] = ev["together"]["complete_and_agree"]
    ood = ev.get("ood", {})
    seen = [r["zero_shot_top1"] for m, r in ood.get("bind", {}).items() if m != "audio"]
    if seen:
        out["OOD zero-shot (image, video, pointcloud)"] = min(seen)
    if "audio" in ood.get("bind", {}):
        out["OOD zero-shot (audio)"] = ood["bind"]["audio"]["zero_shot_top1"]
    if ood.get("chat"):
        out["OOD chat (every modality)"] = _chat_floor(ood["chat"])
    if ev.get("conversations", {}).get("behaviours"):
        out["multi-turn (every behaviour)"] = min(ev["conversations"]["behaviours"].values())
    return out


def _chat_floor(chat: dict) -> float:
    """The worst modality's chat accuracy, each through its best projector."""
    return min(max(r.get("image_projector", 0), r.get("own_projector") or 0) for r in chat.values())


def summary_table(record: dict) -> str:
    """What ``anybind quickstart`` prints at the end: stage times, the metrics against their targets."""
    from anybind.tables import table

    stages = record.get("stages", {})
    stage_rows = [[name, f"{s['seconds']:.0f}s" if s.get("seconds") is not None else "-",
                   "ran" if s.get("ran") else "skipped", s.get("note", "")]
                  for name, s in ((n, stages[n]) for n in STAGES if n in stages)]
    lines = [table(["STAGE", "TIME", "", "NOTE"], stage_rows), ""]
    metric_rows = [[name, f"{value:.3f}", f">= {target(name):.2f}", "ok" if value >= target(name) else "BELOW"]
                   for name, value in record.get("summary", {}).items() if target(name) is not None]
    if metric_rows:
        lines += [table(["METRIC (held-out)", "VALUE", "TARGET", ""], metric_rows), ""]
    ev = record.get("eval") or {}
    if ev.get("bind"):
        lines.append("zero-shot →text: " + ", ".join(f"{m} {r['zero_shot_top1']:.3f}" for m, r in sorted(ev["bind"].items())))
    if ev.get("chat"):
        lines.append("chat: " + ", ".join(f"{m} {r['image_projector']:.3f}" for m, r in sorted(ev["chat"].items())))
    ood = ev.get("ood", {})
    if ood.get("bind"):
        lines.append("OOD zero-shot →text: " + ", ".join(f"{m} {r['zero_shot_top1']:.3f}" for m, r in sorted(ood["bind"].items())))
    if ood.get("chat"):
        lines.append("OOD chat: " + ", ".join(f"{m} {r['image_projector']:.3f}" for m, r in sorted(ood["chat"].items())))
    if ev.get("words_only"):
        lines.append(f"a sentence alone, no output asked: answered without one {ev['words_only']['no_output']:.3f}, "
                     f"and naming the label {ev['words_only']['named_and_no_output']:.3f}")
    if ev.get("conversations", {}).get("behaviours"):
        lines.append("multi-turn: " + ", ".join(f"{b} {v:.3f}" for b, v in ev["conversations"]["behaviours"].items()))
    if "first_interleaved_answer_seconds" in record:
        every = record.get("every_output_answer_seconds")
        lines.append(f"first interleaved answer after {_minutes(record['first_interleaved_answer_seconds'])}"
                     + (f"; every output made by {_minutes(every)}" if every else "")
                     + f"; whole run {record['seconds'] / 60:.1f} min")
    return "\n".join(lines)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
