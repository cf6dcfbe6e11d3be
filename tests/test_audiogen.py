"""Audio out: the audiogen decoder plugin, [AUD] outputs in chat, and answers with sound.

Real parts at tiny sizes: the decoder is trained by ``anybind train decoder --decoder audiogen``
on the small world's speech, and a chat model gets its [AUD] output from align-out.
"""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import anybind
from anybind.chat.events import DoneEvent, OutputEvent, TextEvent
from anybind.chat.render import HtmlRenderer, JsonlRenderer, MarkdownRenderer, TerminalRenderer, media
from anybind.data.manifest import read_manifest
from anybind.models.decoders import load_decoder, load_prompt_encoder
from conftest import TINY_AUDIOGEN, cli_in_process, run_cli

@pytest.fixture(scope="session")
def speech_decoder(small_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("audiogen") / "decoder-audio"
    run_cli("train", "decoder", "--decoder", "audiogen", "--manifest", str(small_world), "--out", str(out), *TINY_AUDIOGEN,
            check=True)
    return out


@pytest.fixture(scope="session")
def speaking_chat(small_world, drawing_chat, speech_decoder, tmp_path_factory):
    """The drawing chat model with a spoken output beside its image output."""
    out = _copy_chat(drawing_chat, tmp_path_factory.mktemp("speaking-chat") / "chat")
    _align_speech(out, small_world, speech_decoder)
    return out


def _copy_chat(chat_dir: Path, out: Path) -> Path:
    """A copy of an (uninstructed) chat model directory that still finds its bound model and decoder."""
    shutil.copytree(chat_dir, out)
    config = json.loads((out / "config.json").read_text())
    config["bound"] = str((chat_dir / config["bound"]).resolve())
    (out / "config.json").write_text(json.dumps(config))
    from anybind.models.output import GenerativeOutput

    image = GenerativeOutput.from_pretrained(out / "image_output")
    image.config.decoder = str((chat_dir / image.config.decoder).resolve())
    image.save_pretrained(out / "image_output")
    return out


def _align_speech(chat_dir: Path, world: Path, speech_decoder: Path) -> None:
    run_cli("train", "align-out", "--manifest", str(world), "--model", str(chat_dir), "--decoder", str(speech_decoder),
            "--steps", "10", "--batch-size", "8", check=True)


def test_an_output_aligned_after_instruct_loads_and_instruct_trains_again_with_it(drawing_chat, speech_decoder,
                                                                                  small_world, tmp_path):
    chat = _copy_chat(drawing_chat, tmp_path / "chat")
    instruct = ("train", "instruct", "--manifest", str(small_world), "--model", str(chat), "--steps", "3",
                "--batch-size", "4", "--conversations", "32", "--layers", "1")
    run_cli(*instruct, check=True)
    record = chat / "instruct" / "training.json"
    assert json.loads(record.read_text())["outputs"] == ["image"]
    _align_speech(chat, small_world, speech_decoder)  # the quickstart's speech, after its first answer
    model = anybind.load(chat)
    assert model.instructed and model.output_order() == ["image", "audio"]
    assert not (chat / "instruct" / "audio_output").exists()  # until instruct runs again: as align-out left it
    again = run_cli(*instruct, check=True)
    assert "now makes audio, image: training it again" in again.stdout
    assert json.loads(record.read_text())["outputs"] == ["audio", "image"]
    assert (chat / "instruct" / "audio_output" / "config.json").is_file()
    assert "already trained" in run_cli(*instruct, check=True).stdout


def test_train_decoder_writes_a_diffusers_directory_and_generate_writes_a_wav(speech_decoder, tmp_path):
    index = json.loads((speech_decoder / "model_index.json").read_text())
    assert index["_class_name"] == "MelDiffusionPipeline"
    assert {"vae", "unet", "scheduler"} <= {p.name for p in speech_decoder.iterdir()}
    assert not list(speech_decoder.rglob("*.bin")) and not list(speech_decoder.rglob("*.pt"))
    record = json.loads((speech_decoder / "training.json").read_text())
    assert record["clips"] > 50 and record["mel"]["n_mels"] == 16
    meta = json.loads((speech_decoder / "anybind.json").read_text())
    assert meta["decoder"] == "audiogen" and meta["format"] == "anybind.decoder.audiogen"
    paths = [tmp_path / "seven.wav", tmp_path / "again.wav", tmp_path / "other.wav"]
    for path, seed in zip(paths, (3, 3, 4)):
        run_cli("generate", "audio", "the spoken word seven", "--decoder", str(speech_decoder), "-o", str(path),
                "--seed", str(seed), "--steps", "2", check=True)
    data, rate = sf.read(paths[0])
    assert rate == 16_000 and data.ndim == 1 and len(data) == 16 * 352 and np.abs(data).max() > 0.1
    assert np.array_equal(data, sf.read(paths[1])[0]) and not np.array_equal(data, sf.read(paths[2])[0])
    from anybind_audio.encoder import load_audio

    assert load_audio(paths[0]).sample_rate == 16_000  # a spoken answer reads back as an audio attachment
    again = run_cli("train", "decoder", "--manifest", str(speech_decoder.parent), "--out", str(speech_decoder),
                    "--decoder", "audiogen")
    assert "already trained" in again.stdout + again.stderr


def test_decode_is_the_pipeline_then_the_vocoder(speech_decoder):
    from anybind_audiogen.decoder import MelDiffusionPipeline

    decoder = load_decoder(f"audiogen:{speech_decoder}")
    cond = decoder.encode_prompt(["the spoken word seven", "the spoken word two"])
    ours = decoder.decode(cond, steps=3, guidance=2.0, seed=5)
    bare = MelDiffusionPipeline.from_pretrained(str(speech_decoder))
    mels = bare(cond, decoder.negative().expand(2, -1, -1), height=16, width=16, guidance_scale=2.0,
                num_inference_steps=3, generator=torch.Generator().manual_seed(5))
    waves = decoder.codec.decode(mels, seed=5)
    for clip, wave in zip(ours, waves):
        assert clip.sample_rate == 16_000 and np.array_equal(clip.samples, wave.numpy())
    # what align-out reads while the decoder still trains is the trained decoder's own conditioning
    assert (speech_decoder / "prompts.json").is_file()
    early = load_prompt_encoder(str(speech_decoder), modality="audio")
    assert early.cond_shape == decoder.cond_shape
    assert torch.equal(early.encode_prompt(["the spoken word seven"]), cond[:1])


def test_the_mel_codec_keeps_what_the_speech_judge_reads(small_world):
    """Real held-out speech through log-mel and back (Griffin-Lim) is still judged as its word."""
    from anybind_audio.encoder import Audio, load_audio
    from anybind_audiogen.judge import SpeechJudge
    from anybind_audiogen.mel import MelCodec

    manifest = read_manifest(small_world)
    judge = SpeechJudge(manifest, "audio")
    assert judge.accuracy is not None and judge.accuracy > 0.3  # 10 words, a handful of voices: chance is 0.1
    _, scored = judge.split(manifest, "audio")
    trained, _ = judge.split(manifest, "audio")
    assert {r["meta"]["voice"] for r in trained}.isdisjoint({r["meta"]["voice"] for r in scored})
    codec = MelCodec()
    clips = [load_audio(r["audio"]) for r in scored]
    waves = torch.stack([codec.window(c.samples, c.sample_rate) for c in clips])
    back = [Audio(w.numpy(), 16_000) for w in codec.decode(codec.encode(waves))]
    real = np.mean([p == r["label"] for p, r in zip(judge.predict(clips), scored)])
    through = np.mean([p == r["label"] for p, r in zip(judge.predict(back), scored)])
    assert through >= real - 0.25


def test_bad_speech_decoders_fail_clearly(speech_decoder, decoder_dir, tmp_path):
    out = str(tmp_path / "x.wav")
    proc = run_cli("generate", "audio", "seven", "--decoder", f"audiogen:{decoder_dir}", "-o", out)
    assert proc.returncode == 1 and "not an audiogen decoder" in proc.stderr and "Traceback" not in proc.stderr
    broken = tmp_path / "broken"
    shutil.copytree(speech_decoder, broken)
    shutil.rmtree(broken / "unet")
    proc = cli_in_process("generate", "audio", "seven", "--decoder", f"audiogen:{broken}", "-o", out)
    assert proc.returncode == 1 and "missing unet" in proc.stderr
    (broken / "anybind.json").write_text("{not json")
    proc = cli_in_process("generate", "audio", "seven", "--decoder", f"audiogen:{broken}", "-o", out)
    assert proc.returncode == 1 and "unreadable" in proc.stderr
    proc = cli_in_process("generate", "audio", "seven", "--decoder", f"audiogen:{tmp_path / 'none'}", "-o", out)
    assert proc.returncode == 1 and "not found" in proc.stderr
    proc = cli_in_process("generate", "audio", "seven", "--decoder", str(speech_decoder), "-o", str(tmp_path / "x.png"))
    assert proc.returncode == 1 and "unsupported audio suffix" in proc.stderr
    proc = cli_in_process("generate", "image", "seven", "--decoder", str(speech_decoder), "-o", str(tmp_path / "x.png"))
    assert proc.returncode == 1 and "makes audio outputs, not image" in proc.stderr


def test_a_chat_model_speaks_and_every_renderer_places_the_sound(speaking_chat, small_world, tmp_path):
    from anybind.models.output import GenerativeOutput

    model = anybind.load(speaking_chat)
    assert sorted(model.outputs) == ["audio", "image"] and model.output().modality == "image"
    assert model.output("audio").token_names()[0] == "[AUD0]"
    speaks = tmp_path / "speaks"
    shutil.copytree(speaking_chat, speaks)
    for name, offset in (("audio_output", 1e4), ("image_output", -1e4)):
        gen = GenerativeOutput.from_pretrained(speaks / name)
        gen.set_logit_offset(offset)
        gen.save_pretrained(speaks / name)
    speaker = anybind.load(speaks)
    events = list(speaker.generate("Say the number seven.", max_new_tokens=6, max_images=1, image_steps=2))
    assert events[0].type == "audio" and isinstance(events[0], OutputEvent) and isinstance(events[-1], DoneEvent)
    clip = events[0].value
    assert clip.sample_rate == 16_000 and clip.samples.dtype == np.float32 and len(clip.samples) == 16 * 352
    # a later turn reads what it said as an audio attachment
    from anybind.eval import evaluate_conversations

    from anybind.eval import output_judge

    world = read_manifest(small_world)
    talk = evaluate_conversations(speaker, world, conversations=3, max_new_tokens=6, judge=output_judge(speaker, world))
    assert talk["conversations"] == 3 and talk["behaviours"]

    image = anybind.load(speaking_chat).decoder("image").generate(["a handwritten four"], steps=2)[0]
    answer = [TextEvent("Four is even."), OutputEvent("image", image, 0), OutputEvent("audio", clip, 1),
              DoneEvent("Four is even.", 9, "stop", 1.0, 0.1)]
    page = io.StringIO()
    HtmlRenderer(page).render(answer)
    html = page.getvalue()
    assert html.index("Four is even.") < html.index("<img") < html.index("<audio controls")
    assert 'src="data:audio/wav;base64,' in html
    lines = io.StringIO()
    JsonlRenderer(lines, images_dir=tmp_path, prefix="answer").render(answer)
    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert [r["type"] for r in records] == ["text", "image", "audio", "done"]
    assert records[2]["path"].endswith("answer-2.wav") and sf.read(records[2]["path"])[1] == 16_000
    text = io.StringIO()
    TerminalRenderer(text, images_dir=tmp_path, prefix="t").render(answer)
    assert "[audio: " in text.getvalue() and (tmp_path / "t-2.wav").is_file()
    markdown = io.StringIO()
    MarkdownRenderer(markdown, images_dir=tmp_path, prefix="m").render(answer)
    assert "[audio 2](" in markdown.getvalue() and media("audio").mime == "audio/wav"


def test_interleaved_scoring_and_training_conversations_with_two_outputs(speaking_chat, small_world):
    from anybind.data.prompts import OutputPrompts
    from anybind.eval import evaluate_together, evaluate_words_only
    from anybind.models.decoders import parse_reference
    from anybind.training.dialogues import make_dialogues

    model = anybind.load(speaking_chat)
    manifest = read_manifest(small_world)
    assert manifest.caption("audio", "seven") == "the spoken word seven"
    result = evaluate_together(manifest, model, steps=2, progress=False)
    assert result["order"] == ["image", "audio"] and result["asked"] == 2 * len(manifest.labels)  # two wordings
    assert 0 <= result["complete_and_agree"] <= result["complete"] <= 1
    assert "then draw it and say it" in result["prompts"][0]
    words = evaluate_words_only(manifest, model)
    assert words["asked"] == 2 * len(manifest.labels)
    assert 0 <= words["named_and_no_output"] <= min(words["no_output"], words["named"]) <= 1
    assert not any(v in p for p in words["prompts"] for v in ("draw", "say", "speak", "show"))
    prompts = {m: parse_reference(model.decoder_reference(m), m)[0].output_prompts() for m in model.outputs}
    assert all(isinstance(p, OutputPrompts) and p.verb for p in prompts.values())
    pool = {"audio": [(model.attach(r["audio"]), r["label"]) for r in manifest.select("train", has=("audio",))[:5]]}
    dialogues = make_dialogues(manifest, pool, 96, 0, prompts)
    together = [d for d in dialogues if len([s for s in d.answer if s[0] == "output"]) == 2]
    assert together and all(d.answer[0][0] == "text" for d in together)
    orders = {tuple(s[1] for s in d.answer[1:]) for d in together}
    assert orders == {("image", "audio"), ("audio", "image")}

    def where(text, verbs):
        return min(text.index(v) for v in verbs if v in text)

    for d in together:  # the words ask for the outputs in the order the answer makes them
        asked = d.turns[-1].text
        image_first = where(asked, prompts["image"].verb) < where(asked, prompts["audio"].verb)
        assert image_first == (d.answer[1][1] == "image")
    captions = {s[2] for d in dialogues for s in d.answer if s[0] == "output" and s[1] == "audio"}
    assert captions and all(c.startswith("the spoken word ") for c in captions)
