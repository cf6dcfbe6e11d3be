"""Images out: the Stable Diffusion decoder plugin, align-out's [IMG] tokens, interleaved chat.

Everything runs for real at tiny sizes: a random SD pipeline with its own CLIP text encoder
saved locally (a user's checkpoint), a tiny SD trained by ``anybind train decoder`` on the
sample world, and a tiny random causal LM (``hf:PATH``).
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import anybind
from anybind.chat import ChatModel, ChatSession
from anybind.chat.conversation import encode, input_embeddings
from anybind.models.decoders import load_decoder
from anybind.chat.decode import decode_text, decode_with_outputs
from anybind.chat.events import OutputEvent, SamplingOptions, TextEvent
from anybind.chat.outputs import OutputStates, OutputVocab
from conftest import TINY_DECODER, always_draws, cli_in_process, run_cli

def test_a_local_sd_checkpoint_generates_through_its_own_text_encoder(tiny_sd, tmp_path):
    out = tmp_path / "seven.png"
    run_cli("generate", "image", "a handwritten seven", "--decoder", f"sd:{tiny_sd}", "-o", str(out), "--steps", "2",
            check=True)
    assert Image.open(out).size == (16, 16)
    run_cli("generate", "image", "a seven", "--decoder", f"sd:{tiny_sd}", "-o", str(tmp_path / "s.png"), "-n", "2",
            "--steps", "2", check=True)
    assert sorted(p.name for p in tmp_path.glob("s-*.png")) == ["s-0.png", "s-1.png"]


def test_decode_is_the_bare_diffusers_pipeline(tiny_sd):
    from diffusers import StableDiffusionPipeline

    decoder = load_decoder(f"sd:{tiny_sd}")
    assert decoder.cond_shape == (12, 32)
    cond = decoder.encode_prompt(["a handwritten seven", "a four"])
    ours = decoder.decode(cond, steps=3, guidance=2.0, seed=1)
    bare = StableDiffusionPipeline.from_pretrained(str(tiny_sd), safety_checker=None, requires_safety_checker=False)
    bare.set_progress_bar_config(disable=True)
    negative = bare.encode_prompt([""], "cpu", 1, False)[0].expand(2, -1, -1)
    theirs = bare(prompt_embeds=cond, negative_prompt_embeds=negative, num_inference_steps=3, guidance_scale=2.0,
                  generator=torch.Generator().manual_seed(1), height=16, width=16).images
    for a, b in zip(ours, theirs):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(ours[0]), np.asarray(ours[1]))


def test_train_decoder_writes_a_diffusers_directory_that_draws(decoder_dir, small_world, tmp_path):
    index = json.loads((decoder_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert {"vae", "unet", "scheduler"} <= {p.name for p in decoder_dir.iterdir()}
    assert not list(decoder_dir.rglob("*.bin")) and not list(decoder_dir.rglob("*.pt"))
    record = json.loads((decoder_dir / "training.json").read_text())
    assert record["images"] > 100 and record["vae_reconstruction_mse"] > 0
    losses = [json.loads(l) for l in (decoder_dir / "metrics.jsonl").read_text().splitlines()]
    assert {m["modality"] for m in losses} == {"vae", "unet"}
    out = tmp_path / "four.png"
    run_cli("generate", "image", "a handwritten four", "--decoder", str(decoder_dir), "-o", str(out), "--steps", "2",
            check=True)
    assert Image.open(out).size == (16, 16)
    again = run_cli("train", "decoder", "--manifest", str(small_world), "--out", str(decoder_dir), *TINY_DECODER, check=True)
    assert "already trained" in again.stdout + again.stderr


def test_bad_decoders_and_outputs_fail_clearly(tiny_sd, small_bound, tmp_path):
    proc = run_cli("generate", "image", "a seven", "--decoder", str(small_bound), "-o", str(tmp_path / "x.png"))
    assert proc.returncode == 1 and "not a diffusers pipeline directory" in proc.stderr and "Traceback" not in proc.stderr
    xl = tmp_path / "xl"
    for part in ("unet", "vae", "scheduler"):
        (xl / part).mkdir(parents=True)
    (xl / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    proc = cli_in_process("generate", "image", "a seven", "--decoder", f"sd:{xl}", "-o", str(tmp_path / "x.png"))
    assert proc.returncode == 1 and "StableDiffusionXLPipeline" in proc.stderr
    proc = cli_in_process("generate", "image", "a seven", "--decoder", f"sd:{tmp_path / 'nothing'}", "-o", str(tmp_path / "x.png"))
    assert proc.returncode == 1 and "not found" in proc.stderr
    proc = cli_in_process("generate", "image", "a seven", "--decoder", f"sd:{tiny_sd}", "-o", str(tmp_path / "no" / "x.png"))
    assert proc.returncode == 1 and "does not exist" in proc.stderr
    proc = cli_in_process("generate", "image", "a seven", "--decoder", f"sd:{tiny_sd}", "-o", tmp_path / "x.gif",
                          "--steps", "1")
    assert proc.returncode == 1 and "unsupported image suffix" in proc.stderr
    assert not list(tmp_path.glob("*.png")) + list(tmp_path.glob("*.tmp")) + list(tmp_path.glob(".*tmp"))


def test_align_out_trains_the_image_tokens(drawing_chat):
    config = json.loads((drawing_chat / "config.json").read_text())
    assert config["outputs"] == {"image": "image_output"}
    record = json.loads((drawing_chat / "image_output" / "training.json").read_text())
    assert record["conversations"] > 100 and record["captions"] > 5
    steps = [json.loads(l) for l in (drawing_chat / "metrics.jsonl").read_text().splitlines()
             if json.loads(l).get("stage") == "align-out"]
    assert all(s["ce_img"] > 0 for s in steps)  # every step's drawings teach [IMG0]
    assert steps[-1]["ce_img"] < steps[0]["ce_img"] - 1.0  # learns where [IMG0] belongs
    assert steps[-1]["mse"] < steps[0]["mse"]  # and what the decoder's conditioning is
    model = anybind.load(drawing_chat)
    assert list(model.outputs) == ["image"] and model.output("image").cond_shape == model.decoder("image").cond_shape
    assert model.output().token_names() == ["[IMG0]", "[IMG1]", "[IMG2]", "[IMG3]"]


def test_img_states_collected_while_decoding_are_those_of_one_forward_pass(drawing_chat, tmp_path):
    model = anybind.load(always_draws(drawing_chat, tmp_path / "draws"))
    backbone, gen = model.backbone, model.output("image")
    encoded = encode(backbone.tokenizer, model.conversation("Draw a seven."), model.soft_tokens)
    embeds, mask = input_embeddings(backbone, [encoded], [None], pad_left=True)
    vocab = OutputVocab([gen], backbone.vocab_size)
    tracker = OutputStates(vocab, mask)
    done, tokens = [], []
    for token, hidden in decode_with_outputs(backbone.model, embeds, mask, SamplingOptions(8), backbone.stop_ids, vocab,
                                             max_outputs=1):
        tokens.append(int(token[0]))
        done += tracker.push(token, hidden)
    vocab = backbone.vocab_size
    assert tokens[: gen.tokens] == [vocab + j for j in range(gen.tokens)]  # [IMG0] sampled, the rest forced
    assert all(t < vocab for t in tokens[gen.tokens:])  # max_images=1: back to text after one image
    with torch.no_grad():
        full = torch.cat([embeds, gen.embed[None].to(embeds.dtype)], dim=1)
        states = backbone.model.base_model(inputs_embeds=full).last_hidden_state[0]
    assert len(done) == 1 and done[0][1] == 0 and torch.allclose(done[0][2], states[-gen.tokens:], atol=1e-4)
    # The context the projector reads is every state before [IMG0], as align-out trains on it.
    assert done[0][3].shape == (len(encoded.ids), backbone.hidden_size)
    assert torch.allclose(done[0][3], states[:-gen.tokens], atol=1e-4)


def test_img_context_in_a_left_padded_batch_is_each_rows_own(drawing_chat, tmp_path):
    model = anybind.load(always_draws(drawing_chat, tmp_path / "draws"))
    backbone, gen = model.backbone, model.output("image")
    prompts = ["Draw a seven.", "Please draw the number three for me, in a big and clear hand."]
    encodings = [encode(backbone.tokenizer, model.conversation(p), model.soft_tokens) for p in prompts]
    embeds, mask = input_embeddings(backbone, encodings, [None, None], pad_left=True)
    vocab = OutputVocab([gen], backbone.vocab_size)
    tracker = OutputStates(vocab, mask, [e.request_start for e in encodings])
    done = []
    for token, hidden in decode_with_outputs(backbone.model, embeds, mask, SamplingOptions(6), backbone.stop_ids, vocab,
                                             max_outputs=1):
        done += tracker.push(token, hidden)
    assert sorted(row for row, _, _, _ in done) == [0, 1]
    for row, _, _, context in done:
        alone, _ = input_embeddings(backbone, [encodings[row]], [None], pad_left=True)
        with torch.no_grad():
            expected = backbone.model.base_model(inputs_embeds=alone).last_hidden_state[0]
        # the request's own states only: from its first word (the system prompt left out)
        expected = expected[encodings[row].request_start:]
        assert 0 < encodings[row].request_start and context.shape == expected.shape
        assert torch.allclose(context, expected, atol=1e-4)


def test_the_output_projector_reads_the_context_when_configured():
    from anybind.chat.outputs import pad_contexts
    from anybind.models.output import GenerativeOutput, GenerativeOutputConfig

    torch.manual_seed(0)
    gen = GenerativeOutput(GenerativeOutputConfig(lm_width=8, tokens=2, cond_tokens=3, cond_width=5, width=16, context=True))
    states = torch.randn(2, 2, 8)
    context, mask = pad_contexts([torch.randn(4, 8), torch.randn(2, 8)])
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    out = gen(states, context, mask)
    assert out.shape == (2, 3, 5)
    changed = context.clone()
    changed[0, 1] += 1.0
    assert not torch.allclose(gen(states, changed, mask)[0], out[0])  # a real position is read ...
    padded = context.clone()
    padded[1, 3] += 100.0
    assert torch.allclose(gen(states, padded, mask), out, atol=1e-6)  # ... padding is not
    with pytest.raises(ValueError, match="context"):
        gen(states)
    plain = GenerativeOutput(GenerativeOutputConfig(lm_width=8, tokens=2, cond_tokens=3, cond_width=5, width=16))
    assert plain(states).shape == (2, 3, 5)  # projectors saved before context load and run as they were


def test_the_gate_reads_where_each_rows_answer_starts(drawing_chat, monkeypatch):
    """[IMG0]'s logit at every step reads that step's state and the state where the row's answer
    starts (the last of its prompt), as align-out and instruct train it, in a left-padded batch."""
    import anybind.chat.decode as decode
    from anybind.models.output import GenerativeOutput, GenerativeOutputConfig

    model = anybind.load(drawing_chat)
    backbone, gen = model.backbone, model.output("image")
    assert gen.config.request_gate
    seen = []
    real_sample = decode.sample
    monkeypatch.setattr(decode, "sample", lambda logits, *a: seen.append(logits.clone()) or real_sample(logits, *a))
    prompts = ["Draw a seven.", "Write one sentence about the number three, then draw it, please."]
    encodings = [encode(backbone.tokenizer, model.conversation(p), model.soft_tokens) for p in prompts]
    embeds, mask = input_embeddings(backbone, encodings, [None, None], pad_left=True)
    tokens = [t for t, _ in decode_with_outputs(backbone.model, embeds, mask, SamplingOptions(3), backbone.stop_ids,
                                                OutputVocab([gen], backbone.vocab_size))]
    V = backbone.vocab_size
    for row, e in enumerate(encodings):
        ids = list(e.ids) + [int(t[row]) for t in tokens[:-1]]
        if any(i >= V for i in ids):
            continue  # an image started: its forced tokens are checked elsewhere
        with torch.no_grad():
            states = backbone.model.base_model(input_ids=torch.tensor([ids])).last_hidden_state[0]
            expected = gen.logit(states[len(e.ids) - 1:], states[len(e.ids) - 1])
        got = torch.stack([logits[row, V] for logits in seen[:len(expected)]])
        assert torch.allclose(got, expected, atol=1e-3)
    # A gate that reads the request needs it; one saved before it existed reads the state alone.
    torch.manual_seed(0)
    both = GenerativeOutput(GenerativeOutputConfig(lm_width=8, tokens=2, cond_tokens=3, cond_width=5, width=16,
                                                   request_gate=True))
    hidden, request = torch.randn(3, 8), torch.randn(8)
    with pytest.raises(ValueError, match="request"):
        both.logit(hidden)
    assert not torch.allclose(both.logit(hidden, request), both.logit(hidden, request + 1.0))
    alone = GenerativeOutput(GenerativeOutputConfig(lm_width=8, tokens=2, cond_tokens=3, cond_width=5, width=16))
    assert torch.equal(alone.logit(hidden), alone.logit(hidden, request))


def test_a_word_never_follows_itself_in_an_answer(drawing_chat):
    """The tiny random LM loops on one token when decoding greedily; with its tokens marked as
    words it never repeats one straight away. Digits and punctuation are not words."""
    from anybind.models.output import token_texts, word_tokens

    model = anybind.load(drawing_chat)
    backbone, gen = model.backbone, model.output("image")
    prompts = ["Draw a seven.", "What is this?", "Tell me about the sea.", "Hello there, how are you?"]
    encodings = [encode(backbone.tokenizer, model.conversation(p), model.soft_tokens) for p in prompts]
    embeds, mask = input_embeddings(backbone, encodings, [None] * len(prompts), pad_left=True)
    vocab, V = OutputVocab([gen], backbone.vocab_size), backbone.vocab_size

    def answers(words):
        steps = decode_with_outputs(backbone.model, embeds, mask, SamplingOptions(48), [], vocab, max_outputs=0,
                                    words=words)
        return torch.stack([t for t, _ in steps], dim=1).tolist()

    def repeats(rows):
        return sum(a == b and a < V for row in rows for a, b in zip(row, row[1:]))

    assert repeats(answers(None)) > 0  # what the guard is for
    assert repeats(answers(torch.ones(V, dtype=torch.bool))) == 0
    words = word_tokens(token_texts(backbone.tokenizer, V))
    def single(texts):
        ids = [backbone.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        return [i[0] for i in ids if len(i) == 1]

    whole_words = single([" the", " is", " seven", " draw", "Here", " digit"])
    assert whole_words and all(words[i] for i in whole_words)
    assert not any(words[i] for i in single(["7", "0", ".", "...", "\n", " ", "!"]))
    assert model.words.shape == (V,)


def test_an_answer_that_begins_as_if_it_drew_and_draws_nothing_is_decoded_again(drawing_chat, tmp_path):
    """The answers of a model that never draws, with its opening ("Here is") set to how the tiny
    LM's first answer begins: that answer is decoded again without its first token, the same in
    batch and streamed (and nothing of the first try is streamed); the others are left as they were."""
    from anybind.chat.batch import greedy_answers
    from anybind.chat.outputs import broke_promise, promised

    model = anybind.load(drawing_chat)
    model.output("image").set_logit_offset(-1e4)
    prompts = ["Draw a seven.", "What is this?", "Hello there."]
    conversations = [model.conversation(p) for p in prompts]
    model.opener = "\x00 begins no answer"
    before = [a.text for a in greedy_answers(model, conversations, max_new_tokens=8, make=True)]
    tokenizer = model.backbone.tokenizer
    model.opener = tokenizer.decode(tokenizer(before[0], add_special_tokens=False)["input_ids"][:1])
    assert broke_promise(before[0], 0, model.opener) and not broke_promise(before[0], 1, model.opener)
    after = [a.text for a in greedy_answers(model, conversations, max_new_tokens=8, make=True)]
    assert not after[0].startswith(model.opener) and after[0]
    assert [b for b, a in zip(before, after) if not b.startswith(model.opener)] == \
        [a for b, a in zip(before, after) if not b.startswith(model.opener)]
    assert after[0] == greedy_answers(model, conversations[:1], max_new_tokens=8, make=True)[0].text
    events = list(model.generate(prompts[0], max_new_tokens=8))
    streamed = "".join(e.text for e in events if e.type == "text")
    assert streamed == events[-1].text and streamed.strip() == after[0]
    assert promised("", "Here is") and promised(" Here", "Here is") and promised("Here is a seven.", "Here is")
    assert not promised("Hello", "Here is") and not broke_promise("Hello.", 0, "Here is")
    # an answer that draws as it began to is never decoded again
    drawing = ChatModel.from_pretrained(always_draws(drawing_chat, tmp_path / "draws"))
    drawing.opener = ""
    events = list(drawing.generate(prompts[0], max_new_tokens=6, max_images=1))
    assert [e.type for e in events][0] == "image" and events[-1].usage["images"] == 1


def test_an_output_its_request_does_not_ask_for_is_not_made_and_not_begun(drawing_chat, tmp_path):
    """A model whose [IMG0] gate always wins: with a request gate that says no, nothing is drawn and
    the answer may not begin as one that draws (batch and streamed alike); one that says yes draws;
    and the gate survives saving."""
    from anybind.chat.batch import greedy_answers
    from anybind.chat.decode import _Steps
    from anybind.models.output import GenerativeOutput

    model = ChatModel.from_pretrained(always_draws(drawing_chat, tmp_path / "draws"))
    conversations = [model.conversation(p) for p in ("Draw a seven.", "Hello there.")]
    output = model.output("image")
    assert output.asked_logit(torch.zeros(2, output.config.asked_width)) is None  # none until instruct fits it
    output.asked, output.config.asked_gate = output.new_asked_gate(), True
    torch.nn.init.zeros_(output.asked.weight)
    with torch.no_grad():
        output.asked.bias.fill_(1e4)  # asked: drawn as before
    assert all(a.outputs for a in greedy_answers(model, conversations, max_new_tokens=6, make=True))
    with torch.no_grad():
        output.asked.bias.fill_(-1e4)  # not asked
    model.opener = ""
    free = greedy_answers(model, conversations, max_new_tokens=6, make=True)
    assert not any(a.outputs for a in free) and all(a.text for a in free)
    tokenizer = model.backbone.tokenizer
    model.opener = tokenizer.decode(tokenizer(free[0].text, add_special_tokens=False)["input_ids"][:1])
    refused = greedy_answers(model, conversations, max_new_tokens=6, make=True)
    assert not refused[0].text.startswith(model.opener) and not any(a.outputs for a in refused)
    events = list(model.generate("Draw a seven.", max_new_tokens=6))
    assert "image" not in [e.type for e in events] and events[-1].text.strip() == refused[0].text
    # each row is refused its own way: the first row may not begin with token 3, the second may
    steps = _Steps(torch.ones(2, 4, dtype=torch.long), SamplingOptions(max_new_tokens=2), [], "cpu")
    steps.refuse_first(torch.tensor([3]), torch.tensor([True, False]))
    logits = torch.zeros(2, 6)
    logits[:, 3], logits[:, 5] = 2.0, 1.0
    assert steps.pick(logits).tolist() == [5, 3]
    request = torch.randn(3, output.config.asked_width)
    again = GenerativeOutput.from_pretrained(output.save_pretrained(tmp_path / "output"))
    assert again.config.asked_gate and torch.equal(again.asked_logit(request), output.asked_logit(request))


def test_each_output_is_the_sample_its_words_are_nearest_of_several(drawing_chat):
    """``candidates`` samples per row, decoded in one batch; the one kept is the one whose image
    tower embedding is nearest the row's words through the text tower (not merely the first),
    and without words, or with one candidate, it is the first sample."""
    import torch.nn.functional as F

    from anybind.chat.best_of import nearest_words, words_of

    model = ChatModel.from_pretrained(drawing_chat)
    output = model.output("image")
    assert output.config.candidates == 4  # align-out's default, saved with the model
    torch.manual_seed(0)
    rows = 4  # enough rows that some row's nearest sample is not its first (seeded: it is)
    states, context = torch.randn(rows, output.tokens, output.config.lm_width), torch.randn(rows, 3, output.config.lm_width)
    mask = torch.ones(rows, 3, dtype=torch.bool)
    samples = model.make("image", states.repeat_interleave(4, 0), context.repeat_interleave(4, 0),
                         mask.repeat_interleave(4, 0), seed=3, steps=2, candidates=1)
    assert model.make("image", states, context, mask, seed=3, steps=2)[0].tobytes() == samples[0].tobytes()
    drawn = F.normalize(model.embed_raw("image", samples), dim=-1).view(rows, 4, -1)
    phrases = [words_of(f"Draw a {d}.", f"Here is a handwritten {d}.") for d in ("zero", "three", "seven", "nine")]
    near = {p: drawn @ F.normalize(model.embed_resolved([("text", p)]), dim=-1)[0] for p in phrases}  # (rows, 4)
    # The first sample clearly not the nearest: embedded in other batch shapes, near-ties may flip.
    wrong_first = {p: [bool(near[p][row, 0] < near[p][row].max() - 1e-3) for row in range(rows)] for p in phrases}
    words = [next((p for p in phrases if wrong_first[p][row]), phrases[0]) for row in range(rows)]
    assert any(wrong_first[words[row]][row] for row in range(rows))  # a choice the first sample would get wrong
    kept = model.make("image", states, context, mask, seed=3, steps=2, words=words)
    for row in range(rows):
        # one of its own samples (decoded again: a pixel may differ by a level or two between runs)
        gaps = [np.abs(np.asarray(kept[row], dtype=np.int16) - np.asarray(samples[row * 4 + c], dtype=np.int16)).max()
                for c in range(4)]
        choice = int(np.argmin(gaps))
        assert gaps[choice] <= 2
        assert near[words[row]][row, choice] >= near[words[row]][row].max() - 1e-4  # the nearest to its words
        assert choice != 0 or not wrong_first[words[row]][row]
    with pytest.warns(UserWarning, match="image tower cannot read"):
        assert nearest_words(model, "image", ["not an image"] * 4, words[:1], 4) == ["not an image"]
    assert ChatModel.from_pretrained(drawing_chat, candidates=1).output("image").config.candidates == 1  # chat --candidates


def test_eval_generate_prints_each_part_with_its_own_examples(drawing_chat, small_world, tmp_path):
    """A model that always draws: every request for a sentence is answered with a drawing, so both
    the write-then-draw and the words-alone lines have examples, each printed under its own line."""
    model = always_draws(drawing_chat, tmp_path / "draws")
    proc = cli_in_process("eval", "generate", "--model", model, "--manifest", small_world, "-n", "2", "--steps", "1",
                          check=True)
    lines = proc.stdout.splitlines()
    alone = next(i for i, line in enumerate(lines) if line.startswith("chat: a sentence alone"))
    then = next(i for i, line in enumerate(lines) if line.startswith("chat: a sentence, then the output"))
    assert "no output 0.000" in lines[alone]  # it always draws
    assert lines[then + 1].startswith("  'Write a sentence about") and "output(s)" in lines[then + 1]
    assert lines[alone + 1].startswith("  '") and lines[alone + 1].endswith("+ image")


def test_images_may_start_only_at_the_answer_start_or_after_a_sentence(tiny_lm):
    from anybind.models.output import sentence_boundaries, token_texts
    from anybind.models.backbone import load_backbone

    backbone = load_backbone(f"hf:{tiny_lm}")
    ends = sentence_boundaries(token_texts(backbone.tokenizer, backbone.vocab_size))
    ids = backbone.tokenizer("It is the digit seven. Which digit?", add_special_tokens=False)["input_ids"]
    marked = [backbone.tokenizer.decode([i]) for i in ids if ends[i]]
    assert [m.strip() for m in marked] == [".", "?"] or [m.strip()[-1] for m in marked] == [".", "?"]


def test_text_before_an_image_ends_where_the_image_may_start(tiny_lm):
    from anybind.training.align_out import text_before_output as text_before_image
    from anybind.models.output import sentence_boundaries, token_texts
    from anybind.models.backbone import load_backbone

    backbone = load_backbone(f"hf:{tiny_lm}")
    tokenizer = backbone.tokenizer
    ends = sentence_boundaries(token_texts(tokenizer, backbone.vocab_size))
    written = tokenizer("Here it is.", add_special_tokens=False)["input_ids"]
    assert text_before_image(tokenizer, "Here it is.", ends) == written  # already ends a sentence
    cut = text_before_image(tokenizer, "an answer cut off mid", ends)  # the LM's own, truncated
    assert cut and ends[cut[-1]] and tokenizer.decode(cut).rstrip().endswith(".")
    assert text_before_image(tokenizer, "", ends) == []  # the image first


def test_the_lms_own_answers_answer_a_repeated_question_once(drawing_chat, monkeypatch):
    import anybind.chat.batch

    chat = ChatModel.from_pretrained(drawing_chat)
    rows = []
    real = anybind.chat.batch.decode_text

    def counting(model, embeds, *args, **kwargs):
        rows.append(len(embeds))
        return real(model, embeds, *args, **kwargs)

    monkeypatch.setattr(anybind.chat.batch, "decode_text", counting)
    got = chat.own_answers(["Say hi.", "Name a colour.", "Say hi.", "Say hi."], 6)
    assert sum(rows) == 2  # two distinct questions decoded
    assert len(got) == 4 and got[0] == got[2] == got[3]
    assert got[1] == chat.own_answers(["Name a colour."], 6)[0]


def test_a_silent_img_token_leaves_text_generation_unchanged(drawing_chat):
    model = anybind.load(drawing_chat)
    model.output("image").set_logit_offset(-1e4)
    backbone = model.backbone
    encoded = encode(backbone.tokenizer, model.conversation("Which digit is this?"), model.soft_tokens)
    embeds, mask = input_embeddings(backbone, [encoded], [None], pad_left=True)
    plain = [int(t[0]) for t in decode_text(backbone.model, embeds, mask, SamplingOptions(10), backbone.stop_ids)]
    vocab = OutputVocab(list(model.outputs.values()), backbone.vocab_size)
    with_gen = [int(t[0]) for t, _ in decode_with_outputs(backbone.model, embeds, mask, SamplingOptions(10),
                                                          backbone.stop_ids, vocab)]
    assert plain == with_gen


def test_chat_interleaves_images_in_every_format(drawing_chat, tmp_path):
    chat_dir = always_draws(drawing_chat, tmp_path / "draws")
    model = ChatModel.from_pretrained(chat_dir)
    events = list(model.generate("Draw a seven.", max_new_tokens=6, max_images=1))
    kinds = [e.type for e in events]
    assert kinds[0] == "image" and kinds[-1] == "done" and events[-1].usage["images"] == 1
    assert isinstance(events[0], OutputEvent) and events[0].image.size == (16, 16)
    assert all(isinstance(e, TextEvent) for e in events[1:-1])
    session = ChatSession(model, SamplingOptions(6), max_images=1)
    list(session.ask("Draw a seven."))
    drawn = session.turns[-1].attachments  # later turns see the drawn image, like a user's
    assert session.turns[-1].role == "assistant" and [a.modality for a in drawn] == ["image"]

    page = tmp_path / "answer.html"
    run_cli("chat", "Draw a seven.", "--model", str(chat_dir), "--format", "html", "-o", str(page), "--max-tokens", "6",
            check=True)
    html = page.read_text()
    assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    assert html.count("src=\"data:image/png;base64,") >= 1 and "src=\"http" not in html
    assert not list(tmp_path.glob("answer-*.png"))  # self-contained: no image files

    proc = cli_in_process("chat", "Draw a seven.", "--model", chat_dir, "--format", "markdown", "--images-dir", tmp_path,
                          "--max-tokens", "6", check=True)
    assert "![image 1](" in proc.stdout and (tmp_path / "image-1.png").is_file()

    proc = cli_in_process("chat", "Draw a seven.", "--model", chat_dir, "--format", "jsonl", "--images-dir", tmp_path,
                          "--max-tokens", "6", check=True)
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    image = next(e for e in events if e["type"] == "image")
    assert Image.open(image["path"]).size == (16, 16) and events[-1]["type"] == "done"

    proc = cli_in_process("chat", "Draw a seven.", "--model", chat_dir, "--max-tokens", "6", "--images-dir", tmp_path, check=True)
    assert "[image: " in proc.stdout


def test_mismatched_decoder_and_unwritable_output_fail_before_writing(drawing_chat, tiny_sd, tmp_path):
    page = tmp_path / "answer.html"
    proc = run_cli("chat", "Draw a seven.", "--model", str(drawing_chat), "--decoder", f"sd:{tiny_sd}",
                   "--format", "html", "-o", str(page))
    assert proc.returncode == 1 and "expects 12x32" in proc.stderr and "Traceback" not in proc.stderr
    assert not page.exists() and not list(tmp_path.iterdir())
    proc = run_cli("chat", "Draw a seven.", "--model", str(drawing_chat), "-o", str(tmp_path / "missing" / "a.md"))
    assert proc.returncode == 1 and "does not exist" in proc.stderr
