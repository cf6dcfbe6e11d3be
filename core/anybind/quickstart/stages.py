"""The quickstart's stages, in order; each takes the :class:`~anybind.quickstart.run.Quickstart`
and returns ``(ran, note)`` (``ran`` None: started in the background)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from anybind.quickstart.background import BackgroundJob


def world(q) -> tuple:
    from anybind.data.world import build_world

    warm_backbone(q)
    if (q.run.world / "manifest.jsonl").is_file():
        return False, "already built"
    build_world(q.run.world)
    return True, ""


def warm_backbone(q) -> None:
    """Load the backbone once in a background process (one thread), unless align-in is done:
    a backbone that converts its weights on first use then finds them cached."""
    from anybind.layout import ChatDir
    from anybind.specs import BINDING_MODALITY

    if q.jobs.get("backbone") or (ChatDir(q.run.chat).projector(BINDING_MODALITY) / "training.json").is_file():
        return
    code = "import sys; from anybind.models.backbone import load_backbone; load_backbone(sys.argv[1])"
    q.jobs["backbone"] = BackgroundJob("backbone load", [sys.executable, "-c", code, q.backbone], q.run.log("backbone"),
                                       share_cores=False)


def trainable_decoders(q) -> list[tuple]:
    """``(spec, directory)`` of every installed decoder anybind can train, one per output
    modality, the binding modality's (images) first: what the quickstart trains and aligns."""
    from anybind import plugins
    from anybind.specs import BINDING_MODALITY

    chosen: dict[str, object] = {}
    for spec in sorted(plugins.decoders().values(), key=lambda s: (s.modality != BINDING_MODALITY, s.modality, s.name)):
        if spec.trainer is not None:
            chosen.setdefault(spec.modality, spec)
    return [(spec, q.run.decoder_of(spec.modality)) for spec in chosen.values()]


#: What a stage of each background job's outputs notes when there is nothing for it to do.
NOTHING_TO_MAKE = {"decoder": "no trainable decoder installed", "further decoders": "no further output modality installed"}

#: Trains each decoder in turn (one command each), in one background process.
_IN_TURN = "import json, subprocess, sys\nfor command in json.loads(sys.argv[1]): subprocess.run(command, check=True)"


def decoder(q) -> tuple:
    """The main output's decoder (images): what the first interleaved answer needs."""
    return _train_decoders(q, trainable_decoders(q)[:1], "decoder", "beside the first model's stages")


def further_decoders(q) -> tuple:
    """Every other output's decoder (e.g. speech), after the first answer: kept off its path."""
    return _train_decoders(q, trainable_decoders(q)[1:], "further decoders", "beside their align-out and instruct")


def _train_decoders(q, chosen: list[tuple], job_name: str, beside: str) -> tuple:
    import json
    import subprocess

    if not chosen:
        return False, NOTHING_TO_MAKE[job_name]
    todo = [(spec, out) for spec, out in chosen if not (out / "anybind.json").is_file()]
    if not todo:
        return False, "already trained"
    commands = [[sys.executable, "-m", "anybind", "train", "decoder", "--decoder", spec.name, "--manifest",
                 str(q.run.world), "--out", str(out), *q.decoder_options.get(spec.name, ())] for spec, out in todo]
    if not q.in_background():
        for command in commands:
            subprocess.run(command, check=True)
        return True, ""
    job = q.jobs[job_name] = BackgroundJob(f"{job_name} training", [sys.executable, "-c", _IN_TURN, json.dumps(commands)],
                                           q.run.log(job_name.replace(" ", "-")))
    names = ", ".join(spec.name for spec, _ in todo)
    return None, f"{names} training in the background {beside} (log: {job.log})"


def join_decoder(q, until: Path | None = None, job_name: str = "decoder") -> None:
    """Wait until the decoders' training has written ``until`` (None: until every decoder is trained)."""
    job = q.jobs.get(job_name)
    if job is None:
        return
    waited = job.join(q.progress, until=until)
    stage = q.record.setdefault("stages", {}).setdefault(job_name, {"ran": True})
    stage["waited"] = round(stage.get("waited", 0.0) + waited, 1)
    stage["note"] = f"in the background; later stages waited {stage['waited']:.0f}s for it"
    if not job.running:
        stage["seconds"] = round(job.seconds, 1)
        q.jobs.pop(job_name)


def first_modalities(q) -> list[str]:
    """The towers the first answer reads: the binding modality's (align-in trains on it) and every
    modality the demo attaches. Every other tower binds after the first answer, and the full
    model reads it too (towers do not depend on one another but through images)."""
    from anybind import plugins
    from anybind.data.manifest import read_manifest
    from anybind.specs import BINDING_MODALITY

    manifest = read_manifest(q.run.world)
    present = set(manifest.modalities()) & set(plugins.modalities())
    attached = [turn["attach"]["modality"] for turn in manifest.demo if turn.get("attach")]
    return [m for m in dict.fromkeys([BINDING_MODALITY, *attached]) if m in present]


def bind(q) -> tuple:
    """The towers of :func:`first_modalities`."""
    return _bind(q, first_modalities(q))


def further_bind(q) -> tuple:
    """Every other installed modality's tower, after the first answer (beside the further decoders)."""
    return _bind(q, None)


def _bind(q, modalities: list[str] | None) -> tuple:
    from anybind.training.bind import BindSettings, train_bind

    results = train_bind(q.run.world, q.run.bind, modalities, settings=BindSettings(progress=q.progress))
    return bool(results), ", ".join(f"{r['modality']} {r['seconds']:.0f}s" for r in results) or "already trained"


#: The first model: the full recipe's LM stages, briefly (its towers are the full ones), so that
#: the first answer comes within about ten minutes on 2 cores; the full model trains after it
#: (bench/RESULTS.md, "a first model").
FIRST_ALIGN_IN = {"steps": 40}
FIRST_ALIGN_OUT = {"steps": 60, "examples": 160}
FIRST_INSTRUCT = {"steps": 25, "conversations": 200, "refit_steps": 60, "request_gate_steps": 200}


def first_model_wanted(q) -> bool:
    """A first model is trained unless the full one already is (a resumed run): it would only
    delay the demo of a better model."""
    return not _instructed(q.run.chat)


def _unless_full(q) -> tuple | None:
    """What a first model's stage returns where the full model is trained (None: train it)."""
    return None if first_model_wanted(q) else (False, "the full model is trained")


def _instructed(chat_dir: Path) -> bool:
    from anybind.layout import ChatDir

    chat = ChatDir(chat_dir)
    return chat.exists and chat.instructed()


def first_align_in(q) -> tuple:
    return _unless_full(q) or _align_in(q, q.run.first_chat, FIRST_ALIGN_IN)


def align_in(q) -> tuple:
    return _align_in(q, q.run.chat, {})


def _align_in(q, chat_dir: Path, options: dict) -> tuple:
    from anybind.training.align_in import AlignSettings, train_align_in

    job = q.jobs.pop("backbone", None)
    if job is not None:
        job.process.wait()  # if it failed, align-in's own load says why
    r = train_align_in(q.run.world, q.run.bind, chat_dir, backbone=q.backbone,
                       settings=AlignSettings(progress=q.progress, **options))
    return not r.get("skipped"), "already trained" if r.get("skipped") else f"{r['steps']} steps"


def first_align_out(q) -> tuple:
    """The main output's generative tokens (images); align-out needs only its decoder's prompt encoder."""
    return _unless_full(q) or _align_outputs(q, q.run.first_chat, FIRST_ALIGN_OUT, main_only=True)


def align_out(q) -> tuple:
    """Every output's, one after the other, each once its decoder's prompt encoder is written."""
    return _align_outputs(q, q.run.chat, {}, main_only=False)


def _align_outputs(q, chat_dir: Path, options: dict, main_only: bool) -> tuple:
    from anybind.training.align_out import AlignOutSettings, train_align_out

    chosen = trainable_decoders(q)[:1] if main_only else trainable_decoders(q)
    if not chosen:
        return False, NOTHING_TO_MAKE["decoder"]
    ran, notes = False, []
    for i, (spec, out) in enumerate(chosen):
        # its prompts.json is written as its training starts: align-out needs no more of it
        join_decoder(q, out / "prompts.json", "decoder" if i == 0 else "further decoders")
        r = train_align_out(q.run.world, chat_dir, str(out), AlignOutSettings(progress=q.progress, **options))
        ran |= not r.get("skipped")
        notes.append(f"{spec.modality} " + ("already trained" if r.get("skipped") else f"mse {r.get('mse', float('nan')):.3f}"))
    return ran, ", ".join(notes)


def first_instruct(q) -> tuple:
    return _unless_full(q) or _instruct(q, q.run.first_chat, FIRST_INSTRUCT)


def instruct(q) -> tuple:
    """instruct with every output and every tower, for the model every evaluation scores: two seeds
    kept as their mean (steadier gates; bench/RESULTS.md, "instruct: a soup of seeds")."""
    return _instruct(q, q.run.chat, {"seeds": 2})


def _instruct(q, chat_dir: Path, options: dict) -> tuple:
    from anybind.training.instruct import InstructSettings, train_instruct

    r = train_instruct(q.run.world, chat_dir, InstructSettings(progress=q.progress, **options))
    return not r.get("skipped"), "already trained" if r.get("skipped") else f"ce {r.get('ce', float('nan')):.3f}"


def demo(q) -> tuple:
    """The world's demo conversation, streamed to the terminal and written to ``demo.html``: the
    turns the chat model's outputs can answer, with "{verbs}" naming every output it makes. It
    shows the first model, or the full one where that is trained already (a resumed run)."""
    from anybind.layout import ChatDir

    join_decoder(q)
    if first_model_wanted(q) and _instructed(q.run.first_chat):
        print("\n(the first model: every stage, briefly; the full model trains after this demo, and shows it again)")
        return _demo(q, "decoder", q.run.first_chat)
    made = ChatDir(q.run.chat).outputs()
    # A run that resumes after a further output was aligned, its decoder not yet trained: that
    # decoder trains in the further stages, and the whole demo comes after it.
    waiting = [spec.modality for spec, out in trainable_decoders(q)[1:]
               if spec.modality in made and not (out / "anybind.json").is_file()]
    if waiting:
        return False, f"the {', '.join(waiting)} decoder is still to train: the whole demo comes after it"
    return _demo(q, "decoder", q.run.chat)


def whole_demo(q) -> tuple:
    """The demo again with the full model, once every output is trained (e.g. ending with a spoken answer)."""
    from anybind.layout import ChatDir

    if q.shown is not None and q.shown >= set(ChatDir(q.run.chat).outputs()):
        return False, "the demo above showed the full model"
    return _demo(q, "further decoders", q.run.chat)


def _demo(q, job_name: str, chat_dir: Path) -> tuple:
    import io

    import anybind
    from anybind.chat import ChatSession
    from anybind.chat.events import SamplingOptions
    from anybind.chat.render import HtmlRenderer, TerminalRenderer
    from anybind.data.manifest import read_manifest
    from anybind.models.decoders import output_verbs
    from anybind.persistence import write_text_atomic

    join_decoder(q, job_name=job_name)  # its decoders trained
    manifest = read_manifest(q.run.world)
    chat = anybind.load(chat_dir)
    if chat_dir == q.run.chat:
        q.shown = set(chat.outputs)
    session = ChatSession(chat, SamplingOptions(max_new_tokens=96))  # short answers
    verbs = output_verbs(chat.output_order())
    page = io.StringIO()
    html = HtmlRenderer(page)
    terminal = TerminalRenderer(sys.stdout, images_dir=q.run.root, prefix="demo")
    seen = q.record.setdefault("first_output_at", {})
    for turn in manifest.demo:
        if not set(turn.get("needs", ())) <= set(chat.outputs) or ("{verbs}" in turn["prompt"] and not chat.outputs):
            continue
        prompt = turn["prompt"].replace("{verbs}", verbs)
        attachments = _demo_attachments(manifest, turn.get("attach"))
        shown = prompt + "".join(f" [{Path(a).name}]" for a in attachments)
        print(f"\nyou> {shown}")
        html.begin_turn(shown)
        for event in session.ask(prompt, attachments):
            terminal.on(event)
            html.on(event)
            sys.stdout.flush()
            if event.type not in ("text", "notice", "done"):
                seen.setdefault(event.type, time.time())
    html.close()
    write_text_atomic(q.run.demo_page, page.getvalue())
    return True, f"{q.run.demo_page}" + (f" ({', '.join(chat.output_order())})" if chat.outputs else "")


def _demo_attachments(manifest, attach: dict | None) -> list[str]:
    """The first held-out file of the asked modality and label, if the world has one."""
    if not attach:
        return []
    modality = attach["modality"]
    rows = [r for r in manifest.select("test", has=(modality,)) if r.get("label") == attach.get("label")]
    return [rows[0][modality]] if rows else []


def evaluate(q) -> tuple:
    """Held-out evaluation three ways: the sample world's test split, the out-of-distribution
    world (built here the first time: it is never trained on), and multi-turn conversations."""
    import anybind
    from anybind.data.manifest import read_manifest
    from anybind.data.world import build_world
    from anybind.eval import (evaluate_bind, evaluate_chat, evaluate_conversations, evaluate_generate,
                              evaluate_together, evaluate_words_only, output_judge)

    if q.record.get("eval") and not q.record.get("trained_this_run"):
        return False, "already evaluated"
    if not (q.run.world_ood / "manifest.jsonl").is_file():
        build_world(q.run.world_ood, variant="ood", progress=q.progress)
    for job_name in ("decoder", "further decoders"):
        join_decoder(q, job_name=job_name)
    chat, bound = anybind.load(q.run.chat), anybind.load(q.run.bind)
    world, ood = read_manifest(q.run.world), read_manifest(q.run.world_ood)  # read once, for every evaluation
    main = chat.output().modality if chat.outputs else None
    judges = {m: output_judge(chat, world, m) for m in chat.outputs}  # each trained once, for every evaluation
    generate = {m: evaluate_generate(world, decoder=chat.decoder(m), model=chat, modality=m, judge=judges[m],
                                     progress=q.progress) for m in chat.outputs}
    q.record["eval"] = {
        "bind": evaluate_bind(bound, world), "chat": evaluate_chat(chat, world, progress=q.progress),
        "generate": generate.pop(main, {}), "outputs": generate,
        "together": evaluate_together(world, chat, judges=judges, progress=q.progress) if len(chat.outputs) > 1 else {},
        "words_only": evaluate_words_only(world, chat) if chat.outputs else {},
        "ood": {"bind": evaluate_bind(bound, ood), "chat": evaluate_chat(chat, ood, progress=q.progress)},
        "conversations": evaluate_conversations(chat, world, judge=judges.get(main), progress=q.progress),
    }
    return True, ""


#: Every stage in the order it runs. The first interleaved answer needs only the main output
#: (images), the towers its demo reads and a first model: its stages come first and the demo right
#: after them; every further output (e.g. speech) then trains its decoder, every further tower
#: binds, and the full model trains every LM stage with every output and tower.
STAGES = (("world", world), ("decoder", decoder), ("bind", bind), ("first align-in", first_align_in),
          ("first align-out", first_align_out), ("first instruct", first_instruct), ("demo", demo),
          ("further decoders", further_decoders), ("further bind", further_bind), ("align-in", align_in),
          ("align-out", align_out), ("instruct", instruct), ("whole demo", whole_demo), ("eval", evaluate))
