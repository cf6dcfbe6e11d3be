"""Stage instruct: LoRA on the LM with the projectors, on templated multi-turn conversations.

Runs for real on the tiny local causal LM (``hf:PATH``), the tiny trained decoder and the
small sample world of the image-output tests.
"""

import hashlib
import json
import os
import shutil

import pytest
import torch

import anybind
from anybind.chat.conversation import Attachment, Turn, encode
from anybind.training.dialogues import OWN, Dialogue, encode_dialogue, make_dialogues
from anybind.data import read_manifest
from conftest import IMAGES_OUT_ONLY, run_cli


def _copy_chat(chat_dir, target):
    """A copy of a chat model directory that still finds its bound model and decoder."""
    shutil.copytree(chat_dir, target)
    config = json.loads((chat_dir / "config.json").read_text())
    config["bound"] = os.path.relpath((chat_dir / config["bound"]).resolve(), target.resolve())
    (target / "config.json").write_text(json.dumps(config))
    for output in (target / "image_output", target / "instruct" / "image_output"):
        if (output / "config.json").is_file():
            gen_config = json.loads((output / "config.json").read_text())
            gen_config["decoder"] = os.path.relpath((chat_dir / gen_config["decoder"]).resolve(), target.resolve())
            (output / "config.json").write_text(json.dumps(gen_config))
    return target


def _digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "instruct" not in p.parts
            and p.name not in ("config.json", "metrics.jsonl")}


@pytest.fixture(scope="module")
def instructed(drawing_chat, small_world, tmp_path_factory):
    chat = _copy_chat(drawing_chat, tmp_path_factory.mktemp("instruct") / "chat")
    before = _digest(chat)
    run_cli("train", "instruct", "--manifest", str(small_world), "--model", str(chat), "--steps", "30",
            "--batch-size", "8", "--conversations", "96", "--lr", "0.01", "--layers", "1", check=True)
    return chat, before


def test_dialogues_cover_every_kind_and_refer_back(small_world):
    manifest = read_manifest(small_world)
    att = {m: [(Attachment(m, f"{m}.x", torch.zeros(4)), label) for label in manifest.labels] for m in ("image", "audio")}
    from anybind_diffusion.prompts import PROMPTS

    dialogues = make_dialogues(manifest, att, 64, seed=0, outputs={"image": PROMPTS})
    answers = [[segment[0] for segment in d.answer] for d in dialogues]
    assert ["text"] in answers and ["text", "output"] in answers and ["own"] in answers
    assert ["output"] not in answers  # an answer that draws says what it draws first
    requests = [d for d in dialogues if len(d.turns) == 1 and d.turns[0].text in
                {r.format(**manifest.fill(l, manifest.prompt.format(label=l))) for r in PROMPTS.request for l in manifest.labels}]
    assert requests and all(d.answer[0] == ("text", f"Here is {d.answer[1][2]}.") for d in requests)
    follow_ups = [d for d in dialogues if d.turns[-1].text in PROMPTS.follow]
    assert follow_ups and all(d.turns[-2].role == "assistant" for d in follow_ups)
    # "Now draw it." after a question about an attachment draws that attachment's label, with
    # plain chat between them at times.
    for d in follow_ups:
        asked = next(n for n in reversed(range(len(d.turns))) if d.turns[n].attachments)
        caption = manifest.prompt.format(label=d.turns[asked + 1].text.split()[-1].rstrip("."))
        assert d.answer == [("text", f"Here is {caption}."), ("output", "image", caption)]
    assert any(d.turns[-2].text == OWN for d in follow_ups)
    assert {a.modality for d in dialogues for t in d.turns for a in t.attachments} == {"image", "audio"}
    # A sentence before a drawing names its label (what eval generate checks): first, or after "Here is".
    for d in dialogues:
        if [segment[0] for segment in d.answer] == ["text", "output"]:
            label = d.answer[1][2].split()[-1]
            assert d.answer[0][1].lower().startswith(label) or d.answer[0][1] == f"Here is {d.answer[1][2]}."
    # No world-specific word comes from core: the follow-ups say the world's own kind of label.
    assert any("digit" in d.turns[-1].text for d in dialogues if len(d.turns) > 1 and not d.turns[-1].attachments)


def test_dialogues_change_subject_and_ask_about_several_attachments(small_world):
    manifest = read_manifest(small_world)
    att = {m: [(Attachment(m, f"{m}.x", torch.zeros(4)), label) for label in manifest.labels] for m in ("image", "audio")}
    from anybind_diffusion.prompts import PROMPTS

    dialogues = make_dialogues(manifest, att, 160, seed=1, outputs={"image": PROMPTS})
    follow = {f.format(**manifest.fill(label)) for f in PROMPTS.follow for label in manifest.labels}
    # A quarter start with earlier turns about other labels; a request after them is answered
    # about what it asks, never the earlier subject.
    requests = [d for d in dialogues if len(d.turns) > 1 and d.answer[-1][0] == "output"
                and d.turns[-1].text not in follow]
    assert len(requests) >= 5
    for d in requests:
        drawn = d.answer[-1][2].split()[-1]
        earlier = [t.text.split()[-1].rstrip(".") for t in d.turns if t.role == "assistant" and not t.attachments]
        earlier += [t.text.split()[0].lower().rstrip(".,:;") for t in d.turns if t.role == "assistant" and t.attachments]
        assert earlier and drawn not in earlier
    several = [d for d in dialogues if len(d.turns[-1].attachments) > 1]
    assert several
    for d in several:
        answer = d.answer[0][1].lower()
        for attachment in d.turns[-1].attachments:
            label = next(l for a, l in att[attachment.modality] if a is attachment)
            assert label in answer
    # Plain chat after talk about an attachment is answered in the LM's own words, as without it.
    plain_after = [d for d in dialogues if d.answer == [("own", "")] and any(t.attachments for t in d.turns)]
    assert plain_after and all(not d.turns[-1].attachments for d in plain_after)
    # Several attachments are answered in one plural sentence, each label in order.
    assert all(d.answer[0][1].startswith(f"They are the {manifest.kind}s ") for d in several)
    # Asked again with no attachment, after two: the answer is the last one's label.
    again = [d for d in dialogues if d.answer[0][0] == "text" and not d.turns[-1].attachments
             and sum(len(t.attachments) == 1 for t in d.turns) >= 2 and d.answer[0][1].startswith("It is")]
    assert len(again) >= 3
    for d in again:
        last = next(t for t in reversed(d.turns) if t.attachments).attachments[0]
        label = next(l for a, l in att[last.modality] if a is last)
        assert d.answer == [("text", manifest.answer_for(label))]


def test_every_kind_of_request_asks_for_every_label(small_world):
    """Each way of asking for a drawing is trained on every label: drawn with the conversation's
    index, the labels once went with the kinds (requests only for even digits)."""
    manifest = read_manifest(small_world)
    att = {"image": [(Attachment("image", "image.x", torch.zeros(4)), label) for label in manifest.labels]}
    from anybind_diffusion.prompts import PROMPTS

    dialogues = make_dialogues(manifest, att, 800, seed=0, outputs={"image": PROMPTS})
    asked: dict[str, set] = {"request": set(), "write_and": set()}
    for d in dialogues:
        if len(d.turns) == 1 and d.answer[-1][0] == "output":
            kind = "request" if d.answer[0][1].startswith("Here is") else "write_and"
            asked[kind].add(d.answer[-1][2])
    every = {manifest.caption("image", label) for label in manifest.labels}
    assert asked == {"request": every, "write_and": every}


def test_a_request_for_a_sentence_alone_is_answered_without_an_output(small_world):
    """The same sentence answers "Write one sentence about B." and starts the answer to "Write one
    sentence about B, then draw it.": only the request's output verb can open the gate."""
    from anybind.data.prompts import WRITE_ONLY
    from anybind_diffusion.prompts import PROMPTS

    manifest = read_manifest(small_world)
    att = {"image": [(Attachment("image", "image.x", torch.zeros(4)), label) for label in manifest.labels]}
    dialogues = make_dialogues(manifest, att, 400, seed=0, outputs={"image": PROMPTS})
    asked = {t.format(**manifest.fill(label)): label for t in WRITE_ONLY for label in manifest.labels}
    alone = [d for d in dialogues if d.turns[-1].text in asked]
    assert len(alone) >= 10 and all(len(d.answer) == 1 and d.answer[0][0] == "text" for d in alone)
    assert not any(verb in d.turns[-1].text for d in alone for verb in ("draw", "show"))
    for d in alone:
        assert d.answer[0][1].lower().startswith(asked[d.turns[-1].text])  # names its label first
    before_drawing = {d.answer[0][1] for d in dialogues if [s[0] for s in d.answer] == ["text", "output"]}
    assert {d.answer[0][1] for d in alone} & before_drawing


def test_a_request_that_starts_with_say_is_answered_with_speech(small_world):
    """To a model that speaks, "Say ..." asks for speech: no training request that starts so is
    answered in words alone ("Say it in one word.", "Say hello." and "Say something about ..., then
    draw it" were, and "Say the number two." was then answered without speech)."""
    from anybind_audiogen.prompts import PROMPTS as SPEECH
    from anybind_diffusion.prompts import PROMPTS as DRAWING

    manifest = read_manifest(small_world)
    att = {m: [(Attachment(m, f"{m}.x", torch.zeros(4)), label) for label in manifest.labels] for m in ("image", "audio")}
    dialogues = make_dialogues(manifest, att, 1200, seed=0, outputs={"image": DRAWING, "audio": SPEECH})
    said = 0
    for d in dialogues:
        answers = [[a.modality for a in t.attachments] for t in d.turns[1:]] + [[s[1] for s in d.answer if s[0] == "output"]]
        for turn, made in zip(d.turns, answers):
            if turn.role == "user" and turn.text.startswith("Say"):
                said += 1
                assert "audio" in made, turn.text
    assert said >= 5  # not vacuous: the check above saw some


def test_earlier_turns_include_a_sentence_with_every_output(small_world):
    """With several outputs, an earlier exchange is at times a sentence and every output (what the
    model made stood in for by attachments of that label), so that a later "Say ..." still speaks."""
    from anybind_audiogen.prompts import PROMPTS as SPEECH
    from anybind_diffusion.prompts import PROMPTS as DRAWING

    manifest = read_manifest(small_world)
    att = {m: [(Attachment(m, f"{m}-{label}", torch.zeros(4)), label) for label in manifest.labels] for m in ("image", "audio")}
    dialogues = make_dialogues(manifest, att, 800, seed=0, outputs={"image": DRAWING, "audio": SPEECH})
    earlier = [t for d in dialogues for t in d.turns[:-1]
               if t.role == "assistant" and {a.modality for a in t.attachments} == {"image", "audio"}]
    assert len(earlier) >= 5
    for turn in earlier:
        label = turn.attachments[0].source.split("-")[1]
        assert turn.text.lower().startswith(label) and all(a.source.endswith(label) for a in turn.attachments)


def test_plain_requests_made_up_from_parts_ask_for_no_output():
    """Everyday requests from parts ("Congratulate my cousin in one line.") are many, and none
    has an output's verb or starts with "Say" (to a model that speaks, a request for speech)."""
    import random
    import re

    from anybind.data.prompts import addressed_request

    rng = random.Random(0)
    made = {addressed_request(rng) for _ in range(3000)}
    assert len(made) >= 500
    verbs = {"draw", "show", "paint", "sketch", "picture", "image", "illustrate", "say", "speak", "pronounce", "hear",
             "voice", "read", "sound"}
    for request in made:
        assert not set(re.findall(r"[a-z]+", request.lower())) & verbs, request


def test_no_training_conversation_asks_in_the_evaluations_words(small_world):
    """The multi-turn and generation evaluations' requests are worded unlike every training
    request, so that they measure wordings the model never saw."""
    from anybind.data import prompts
    from anybind_audiogen.prompts import PROMPTS as SPEECH
    from anybind_diffusion.prompts import PROMPTS as DRAWING

    manifest = read_manifest(small_world)
    att = {m: [(Attachment(m, f"{m}.x", torch.zeros(4)), label) for label in manifest.labels] for m in ("image", "audio")}
    dialogues = make_dialogues(manifest, att, 1600, seed=0, outputs={"image": DRAWING, "audio": SPEECH})
    asked = {t.text for d in dialogues for t in d.turns if t.role == "user"}
    fills = [{**manifest.fill(label), "kind": manifest.kind, "label": label, "verbs": verbs} for label in manifest.labels
             for verbs in ("draw it and say it", "say it and draw it")]
    evaluated = [*prompts.EVAL_PLAIN, *prompts.EVAL_SAY_AGAIN, *prompts.EVAL_SEVERAL, *prompts.EVAL_WRITE_ONLY,
                 *prompts.EVAL_WRITE_AND_ALL]
    for p in (DRAWING, SPEECH):
        evaluated += [*p.eval_request, *p.eval_write_and, *p.eval_follow, *p.eval_ask_made]
    wordings = {t.format(**fill) for t in evaluated for fill in fills}
    assert len(asked) > 300 and not asked & wordings, sorted(asked & wordings)[:5]


def test_encoded_answers_target_img0_and_skip_the_forced_tokens(tiny_lm):
    from anybind.models.backbone import load_backbone

    from anybind.chat.outputs import OutputVocab
    from anybind.models.output import GenerativeOutput, GenerativeOutputConfig

    backbone = load_backbone(f"hf:{tiny_lm}")
    tok, vocab, k = backbone.tokenizer, backbone.vocab_size, 3
    outputs = OutputVocab([GenerativeOutput(GenerativeOutputConfig(lm_width=32, tokens=k))], vocab)
    end = encode(tok, [Turn("user", "Hi")], 1, answer="Hello.").ids[-1]
    d = Dialogue([Turn("user", "Draw a seven.")], [("text", "Seven is odd."), ("output", "image", "a handwritten seven")])
    encode_dialogue(tok, d, 4, outputs, end)
    ids = [t for _, t in d.targets]
    assert ids.count(vocab) == 1 and not any(t > vocab for t in ids) and -1 not in ids  # [IMG0] only
    assert ids[-1] == end
    (start, modality, caption), = d.outputs
    assert modality == "image"
    assert caption == "a handwritten seven" and d.encoded.ids[start:start + k] == [tok.pad_token_id] * k
    assert (start - 1, vocab) in d.targets  # the state before [IMG0] predicts it
    assert (start + k - 1, end) in d.targets  # the last [IMG] state predicts the end of the turn


def test_instruct_trains_adapters_and_leaves_earlier_stages_untouched(instructed):
    chat, before = instructed
    assert (chat / "instruct" / "adapter" / "adapter_config.json").is_file()
    assert (chat / "instruct" / "adapter" / "adapter_model.safetensors").is_file()
    assert (chat / "instruct" / "image_output" / "model.safetensors").is_file()
    from safetensors.torch import load_file

    # adapters on every linear layer of the adapted blocks, attention and MLP alike
    adapted = load_file(str(chat / "instruct" / "adapter" / "adapter_model.safetensors")).keys()
    assert {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in adapted} >= {"q_proj", "v_proj", "o_proj", "down_proj"}
    assert json.loads((chat / "config.json").read_text())["instruct"] == "instruct"
    assert _digest(chat) == before  # align-in and align-out weights as they were
    steps = [json.loads(l) for l in (chat / "metrics.jsonl").read_text().splitlines()
             if json.loads(l).get("stage") == "instruct"]
    assert steps[-1]["ce"] < steps[0]["ce"] - 0.5
    # The image output starts trained (align-out); adapting the LM must not undo it: the
    # projector and [IMG] rows are kept as they were while the adapters train, only the [IMG0]
    # gate follows them; then the projector is fitted again to the adapted LM's states.
    assert steps[-1]["mse"] < 1.5 * steps[0]["mse"]
    record = json.loads((chat / "instruct" / "training.json").read_text())
    assert record["refit_image_mse_after"] < record["refit_image_mse_before"]
    aligned = load_file(str(chat / "image_output" / "model.safetensors"))
    tuned = load_file(str(chat / "instruct" / "image_output" / "model.safetensors"))
    # ...and a request gate of its own, on the request's words: does it ask for a drawing at all?
    assert aligned.keys() == {k for k in tuned if not k.startswith("asked.")} and "asked.weight" in tuned
    assert json.loads((chat / "instruct" / "image_output" / "config.json").read_text())["asked_gate"] is True
    assert record["asked_image"] > 0.9  # of instruct's own requests
    changed = {k for k in aligned if not torch.equal(aligned[k], tuned[k])}
    assert any(k.startswith("head.") for k in changed) and any(k.startswith("blocks.") for k in changed), changed
    assert "embed" not in changed  # the [IMG] rows the LM reads stay as align-out left them
    again = run_cli("train", "instruct", "--model", str(chat))
    assert again.returncode == 0 and "already trained" in again.stdout


def test_a_request_gate_tells_requests_for_a_drawing_from_others_phrased_as_instruct_never_does(small_world):
    """Fitted on instruct's requests, it reads the words through the sentence encoder, so wordings
    it never saw land on their side."""
    from anybind_diffusion.prompts import PROMPTS

    from anybind.chat.outputs import OutputVocab
    from anybind.models.output import GenerativeOutput, GenerativeOutputConfig
    from anybind.training.asked_gate import fit_request_gates

    manifest = read_manifest(small_world)
    att = {m: [(Attachment(m, f"{m}.x", torch.zeros(4)), label) for label in manifest.labels] for m in ("image", "audio")}
    dialogues = make_dialogues(manifest, att, 480, seed=0, outputs={"image": PROMPTS})
    output = GenerativeOutput(GenerativeOutputConfig(lm_width=16, width=8, cond_tokens=2, cond_width=4))
    record = fit_request_gates({"image": output}, dialogues, steps=500, lr=1e-2, weight_decay=0.01, seed=0)
    assert record["asked_image"] > 0.95
    seen = {d.turns[-1].text for d in dialogues}
    unseen = ["Could you sketch a three?", "Make an image of the number one.", "Tell me a fun fact about owls.",
              "What is the opposite of hot?", "Greet my class politely."]
    assert not seen & set(unseen)
    unasked = OutputVocab([output], 10).unasked(unseen)
    assert unasked[:, 0].tolist() == [False, False, True, True, True]
    ungated = GenerativeOutput(GenerativeOutputConfig(lm_width=16, width=8, cond_tokens=2, cond_width=4))
    assert OutputVocab([ungated], 10).unasked(unseen) is None  # no gate: nothing refused, no encoder loaded


def test_load_merges_the_adapter(instructed):
    chat, _ = instructed
    tuned = anybind.load(chat)
    from anybind.chat import ChatModel

    plain = ChatModel.from_pretrained(chat, instruct=False)
    ids = torch.tensor([encode(tuned.backbone.tokenizer, [Turn("user", "Draw a seven.")], 4).ids])
    with torch.no_grad():
        a = tuned.backbone.model(input_ids=ids).logits
        b = plain.backbone.model(input_ids=ids).logits
    assert not torch.allclose(a, b, atol=1e-4)  # the adapter changed the LM
    from peft import PeftModel

    from anybind.models.backbone import load_backbone

    fresh = load_backbone(plain.backbone.reference)
    from anybind.models.backbone import quiet_peft

    with quiet_peft():
        unmerged = PeftModel.from_pretrained(fresh.model, str(chat / "instruct" / "adapter"))
    with torch.no_grad():
        c = unmerged(input_ids=ids).logits
    assert torch.allclose(a, c, atol=1e-4)  # merged weights compute what the adapter computes
    events = list(tuned.generate("Which digit is this?", max_new_tokens=6))
    assert events[-1].type == "done"
    assert tuned.instructed and not plain.instructed


def test_eval_chat_says_an_instructed_model_is_not_emergent(instructed, small_world):
    chat, _ = instructed
    proc = run_cli("eval", "chat", "--model", str(chat), "--manifest", str(small_world), "--limit", "4", check=True)
    assert "(instructed)" in proc.stdout and "(emergent)" not in proc.stdout


def test_quickstart_skips_finished_stages_then_demos_and_evaluates(instructed, small_world, small_bound, decoder_dir,
                                                                     tiny_lm, tmp_path):
    chat, _ = instructed
    run = tmp_path / "quickstart"
    run.mkdir()
    (run / "world").symlink_to(small_world)
    (run / "bind").symlink_to(small_bound)
    (run / "decoder").symlink_to(decoder_dir)
    _copy_chat(chat, run / "chat")
    # The tiny model's words are noise and whether it draws is chance: its gate is opened, so
    # the demo's answers make images and the first one is timed.
    from anybind.models.output import GenerativeOutput

    gate = GenerativeOutput.from_pretrained(run / "chat" / "instruct" / "image_output")
    gate.set_logit_offset(1e4)
    gate.save_pretrained(run / "chat" / "instruct" / "image_output")
    first = run_cli("quickstart", "--out", str(run), "--backbone", f"hf:{tiny_lm}", timeout=900, check=True,
                    env=IMAGES_OUT_ONLY)
    record = json.loads((run / "metrics.json").read_text())
    stages = record["stages"]
    first_model = ["first align-in", "first align-out", "first instruct"]
    further = ["further decoders", "further bind", "align-in", "align-out", "instruct", "whole demo"]
    assert sorted(stages) == sorted(["world", "bind", "decoder", *first_model, "demo", *further, "eval"])
    assert not any(stages[s]["ran"] for s in ("world", "bind", "decoder", *first_model, *further))
    assert all(stages[s]["note"] == "the full model is trained" for s in first_model)  # its demo shows the full one
    assert not (run / "first-chat").exists()
    assert stages["further decoders"]["note"] == "no further output modality installed"
    assert stages["whole demo"]["note"] == "the demo above showed the full model"
    assert stages["demo"]["ran"] and stages["eval"]["ran"]
    page = (run / "demo.html").read_text()
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert "Which digit is spoken here?" in page and "Now draw it." in page
    assert "the number four, then draw it." in page and "Say the number" not in page  # the turns it can answer
    assert record["first_interleaved_answer_seconds"] > 0 and "every_output_answer_seconds" not in record
    assert set(record["eval"]) == {"bind", "chat", "generate", "outputs", "together", "words_only", "ood", "conversations"}
    assert set(record["eval"]["ood"]["bind"]) == {"image", "audio"}  # made differently, never trained on
    assert "multi-turn (every behaviour)" in record["summary"] and "OOD chat (every modality)" in record["summary"]
    assert record["summary"]["bind zero-shot (image)"] == record["eval"]["bind"]["image"]["zero_shot_top1"]
    assert "chat (every modality)" in record["summary"] and "generated digits correct" in record["summary"]
    assert "STAGE" in first.stdout and "METRIC (held-out)" in first.stdout and "skipped" in first.stdout
    table = first.stdout[first.stdout.index("STAGE"):]
    assert table.index("world") < table.index("decoder") < table.index("instruct") < table.index("eval")
    again = run_cli("quickstart", "--out", str(run), "--backbone", f"hf:{tiny_lm}", timeout=900, check=True,
                    env=IMAGES_OUT_ONLY)
    assert json.loads((run / "metrics.json").read_text())["stages"]["eval"]["note"] == "already evaluated"
    assert "already evaluated" in again.stdout


def test_a_chat_run_prints_no_warnings(instructed):
    chat, _ = instructed
    proc = run_cli("chat", "Which digit is this?", "--model", str(chat), "--max-tokens", "4", "--no-images",
                   env={"PYTHONWARNINGS": "default"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Warning" not in proc.stderr, proc.stderr[-2000:]


def test_eval_chat_says_which_modalities_instruct_trained_on(instructed, small_world):
    chat, _ = instructed
    record = json.loads((chat / "instruct" / "training.json").read_text())
    assert record["modalities"] == ["audio", "image"]
    from anybind.chat import ChatModel
    from anybind.eval import evaluate_chat

    model = ChatModel.from_pretrained(chat)
    model.instructed_modalities = {"image"}  # as if instruct had seen images only
    result = evaluate_chat(model, small_world, limit=2, progress=False)
    assert result["image"]["instructed"] and not result["audio"]["instructed"]


def test_a_soup_is_the_mean_of_its_adapters_and_modules(tiny_lm, tmp_path):
    from peft import LoraConfig, get_peft_model

    from anybind.models import lora
    from anybind.models.backbone import load_hf_causal_lm, quiet_peft
    from anybind.models.projector import InputProjector, InputProjectorConfig
    from anybind.training import soup

    for seed in (0, 1):
        torch.manual_seed(seed)
        model, _ = load_hf_causal_lm(str(tiny_lm))
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], init_lora_weights=False)
        with quiet_peft():
            get_peft_model(model, config).save_pretrained(tmp_path / f"adapter-{seed}")
        InputProjector(InputProjectorConfig(embed_dim=8, lm_width=16, hidden=12)).save_pretrained(tmp_path / f"p-{seed}")
    soup.mean_adapter([tmp_path / "adapter-0", tmp_path / "adapter-1"], tmp_path / "soup")
    soup.mean_module([tmp_path / "p-0", tmp_path / "p-1"], tmp_path / "p-soup")
    assert json.loads((tmp_path / "soup" / "adapter_config.json").read_text())["r"] == 8

    def merged(adapter):
        model, _ = load_hf_causal_lm(str(tiny_lm), decoding=True)
        lora.apply(model, adapter)
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    a, b, mean = merged(tmp_path / "adapter-0"), merged(tmp_path / "adapter-1"), merged(tmp_path / "soup")
    assert any(not torch.allclose(a[n], b[n]) for n in a)
    assert all(torch.allclose(mean[n], (a[n] + b[n]) / 2, atol=1e-6) for n in a)
    with quiet_peft():  # peft reads it as any rank-8 adapter, to the same weights
        from peft import PeftModel

        theirs = PeftModel.from_pretrained(load_hf_causal_lm(str(tiny_lm))[0], str(tmp_path / "soup")).merge_and_unload()
    assert all(torch.allclose(p, mean[n], atol=1e-6) for n, p in theirs.named_parameters())
    projectors = [InputProjector.from_pretrained(tmp_path / p).state_dict() for p in ("p-0", "p-1", "p-soup")]
    assert all(torch.allclose(projectors[2][k], (projectors[0][k] + projectors[1][k]) / 2) for k in projectors[0])


def test_instruct_with_two_seeds_resumes_at_the_mean_and_keeps_it(drawing_chat, small_world, tmp_path, monkeypatch):
    from anybind.training import soup
    from anybind.training.instruct import train_instruct
    from anybind.training.settings import InstructSettings

    chat = _copy_chat(drawing_chat, tmp_path / "chat")
    settings = InstructSettings(steps=3, batch_size=4, conversations=32, layers=1, refit_steps=5, seeds=2, progress=False)
    failing = monkeypatch.context()
    with failing as m:
        m.setattr(soup, "mean_adapter", lambda *a: (_ for _ in ()).throw(RuntimeError("killed while saving the mean")))
        with pytest.raises(RuntimeError, match="killed"):
            train_instruct(small_world, chat, settings)
    seeds = chat / "instruct" / "seeds"
    assert sorted(p.name for p in seeds.iterdir()) == ["0", "1"] and (seeds / "1" / "training.json").is_file()
    finished = [json.loads((seeds / s / "training.json").read_text()) for s in ("0", "1")]
    record = train_instruct(small_world, chat, settings)  # both seeds kept: only the mean is made
    assert record["seeds"] == finished and not seeds.exists()  # not trained again; gone once the mean is saved
    adapter = json.loads((chat / "instruct" / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 2 * settings.rank  # rank 2r: both seeds' updates, halved
    model = anybind.load(chat)
    assert model.instructed and list(model.generate("Draw a seven.", max_new_tokens=4))[-1].type == "done"
