"""Any-to-text on a tiny random causal LM built locally (hf:PATH): align-in, chat, eval chat."""

import json

import pytest
import torch

import anybind
from anybind.chat import ChatModel, ChatSession
from anybind.chat.conversation import Attachment, ContextOverflow, Turn, encode, input_embeddings
from anybind.errors import CheckpointError
from anybind.chat.decode import decode_text as decode
from anybind.chat.events import DoneEvent, NoticeEvent, SamplingOptions, TextEvent, TextStream
from anybind.models.backbone import load_backbone
from anybind.data import read_manifest
from conftest import cli_in_process, run_cli


@pytest.fixture(scope="module")
def world(small_world):
    return small_world


@pytest.fixture(scope="module")
def bound(small_bound):
    return small_bound


@pytest.fixture(scope="module")
def chat_dir(world, bound, tiny_lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("chat") / "chat"
    run_cli("train", "align-in", "--manifest", str(world), "--bound", str(bound), "--out", str(out),
            "--backbone", f"hf:{tiny_lm}", "--steps", "40", "--batch-size", "8", "--lr", "0.01", check=True)
    return out


def test_hf_backbone_brings_its_tokenizer_and_template(tiny_lm):
    backbone = load_backbone(f"hf:{tiny_lm}")
    assert backbone.hidden_size == 32 and backbone.max_context == 256
    assert backbone.tokenizer.convert_tokens_to_ids("<|im_end|>") in backbone.stop_ids
    assert not any(p.requires_grad for p in backbone.model.parameters())


def test_attachment_soft_tokens_sit_where_the_attachment_is(tiny_lm):
    backbone = load_backbone(f"hf:{tiny_lm}")
    attachment = Attachment("audio", "seven.wav", torch.zeros(8))
    encoded = encode(backbone.tokenizer, [Turn("user", "Which digit is this?", [attachment])], 4, answer="Seven.")
    (start, got), = encoded.slots
    assert got is attachment
    assert encoded.ids[start : start + 4] == [backbone.tokenizer.pad_token_id] * 4
    before = backbone.tokenizer.decode(encoded.ids[:start])
    after = backbone.tokenizer.decode(encoded.ids[start + 4 : encoded.answer_start])
    assert before.endswith("user\n[audio: ") and after.startswith("]\nWhich digit is this?")
    assert backbone.tokenizer.decode(encoded.ids[encoded.answer_start:]).startswith("Seven.")
    soft = torch.randn(1, 4, 32)
    embeds, mask = input_embeddings(backbone, [encoded], [soft], pad_left=True)
    assert torch.equal(embeds[0, start : start + 4], soft[0]) and mask.all()


def test_the_request_starts_at_the_last_messages_content_and_ids_are_those_of_one_pass(tiny_lm):
    backbone = load_backbone(f"hf:{tiny_lm}")
    tokenizer = backbone.tokenizer
    turns = [Turn("user", "Which digit is this?"), Turn("assistant", "It is the digit seven."),
             Turn("user", "Now write about the number four, then draw it.")]
    encoded = encode(tokenizer, turns, 4)
    prompt = tokenizer.apply_chat_template([{"role": t.role, "content": t.text} for t in turns], tokenize=False,
                                           add_generation_prompt=True)
    assert encoded.ids == tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(encoded.ids[encoded.request_start:]).startswith("Now write about the number four")
    assert "seven" not in tokenizer.decode(encoded.ids[encoded.request_start:])
    # with attachments in the earlier turn and in the request, each slot stays where it was
    audio = Attachment("audio", "seven.wav", torch.zeros(8))
    image = Attachment("image", "four.png", torch.zeros(8))
    turns[0].attachments, turns[2].attachments = [audio], [image]
    encoded = encode(tokenizer, turns, 4)
    (first, a), (second, b) = encoded.slots
    assert (a, b) == (audio, image) and first < encoded.request_start <= second
    assert tokenizer.decode(encoded.ids[encoded.request_start:second]) == "[image: "
    single = encode(tokenizer, turns[-1:], 4)
    assert tokenizer.decode(single.ids[single.request_start:]).startswith("[image: ")


def test_decode_loop_matches_transformers_generate(tiny_lm):
    """Same tokens as `generate` on the same left-padded batch of embeddings with soft tokens."""
    backbone = load_backbone(f"hf:{tiny_lm}")
    tokenizer = backbone.tokenizer
    turns = [[Turn("user", "Which digit is this?", [Attachment("image", "a.png", torch.zeros(8))])],
             [Turn("user", "Describe this attachment, please, in a few words.", [])]]
    encodings = [encode(tokenizer, t, 4) for t in turns]
    torch.manual_seed(1)
    embeds, mask = input_embeddings(backbone, encodings, [torch.randn(1, 4, 32), None], pad_left=True)
    ours = torch.stack(list(decode(backbone.model, embeds, mask, SamplingOptions(max_new_tokens=12))), dim=1)
    theirs = backbone.model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=12, do_sample=False,
                                     eos_token_id=None, pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(ours, theirs[:, -12:])


def test_sampling_is_seeded_and_nucleus_limited(tiny_lm):
    backbone = load_backbone(f"hf:{tiny_lm}")
    encoded = encode(backbone.tokenizer, [Turn("user", "Describe this.")], 4)
    embeds, mask = input_embeddings(backbone, [encoded], [None], pad_left=True)

    def run(seed, top_p=0.9):
        options = SamplingOptions(max_new_tokens=10, temperature=1.5, top_p=top_p, seed=seed)
        return torch.cat(list(decode(backbone.model, embeds, mask, options))).tolist()

    assert run(3) == run(3)
    assert len({tuple(run(s)) for s in range(6)}) > 1
    greedy = torch.cat(list(decode(backbone.model, embeds, mask, SamplingOptions(max_new_tokens=10)))).tolist()
    assert run(5, top_p=1e-6) == greedy  # a nucleus of one token is greedy


def test_text_stream_never_splits_a_character(tiny_lm):
    tokenizer = load_backbone(f"hf:{tiny_lm}").tokenizer
    text = "héllo wörld 🙂 seven"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    stream = TextStream(tokenizer)
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) == text == stream.text
    assert not any("\ufffd" in p for p in pieces)
    # Cut off inside the emoji (as a token limit may): the held-back bytes come out at the end.
    cut = next(n for n in range(1, len(ids)) if tokenizer.decode(ids[:n]).endswith("\ufffd"))
    stream = TextStream(tokenizer)
    pieces = [stream.push(i) for i in ids[:cut]]
    assert not any("\ufffd" in p for p in pieces)
    pieces.append(stream.flush())
    assert "".join(pieces) == stream.text and stream.text.endswith("\ufffd") and stream.flush() == ""


def test_align_in_trains_the_projector_and_writes_a_chat_model(chat_dir, bound):
    config = json.loads((chat_dir / "config.json").read_text())
    assert config["format"] == "anybind.chat" and config["projectors"] == ["image"]
    assert (chat_dir / config["bound"]).resolve() == bound.resolve()
    assert sorted(p.name for p in (chat_dir / "projectors" / "image").iterdir()) == \
        ["config.json", "model.safetensors", "training.json"]
    lines = [json.loads(l) for l in (chat_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 40
    # the frozen LM learned to read the soft tokens (logged every 10 steps; the last three averaged,
    # since a tiny model's loss moves by ~0.8 from one logged batch to the next)
    first, last = lines[0]["loss"], sum(l["loss"] for l in lines[-3:]) / 3
    assert last < first - 0.75, (first, last)


def test_chat_cli_streams_an_answer_about_any_modality(chat_dir, world):
    manifest = read_manifest(world)
    image = manifest.select("test", has=("image",))[0]["image"]
    audio = manifest.select("test", has=("audio",))[0]["audio"]
    proc = run_cli("chat", "Which digit is this?", "--attach", image, "--attach", audio, "--model", str(chat_dir),
                   "--format", "jsonl", "--max-tokens", "6", check=True)
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[-1]["type"] == "done" and 1 <= events[-1]["tokens"] <= 6
    assert "".join(e["text"] for e in events if e["type"] == "text") == events[-1]["text"]
    proc = run_cli("chat", "Which digit is this?", "--attach", audio, "--model", str(chat_dir), "--max-tokens", "4",
                   "--temperature", "0.8", "--seed", "1", check=True)
    assert proc.stdout.endswith("\n")


def test_interactive_chat_keeps_history_and_survives_bad_input(chat_dir, world):
    audio = read_manifest(world).select("test", has=("audio",))[0]["audio"]
    typed = f"/attach {audio}\nWhich digit is this?\n/attach missing.wav\n/history\n/frobnicate\nAnd now?\n/reset\n/history\n/quit\n"
    proc = run_cli("chat", "--model", str(chat_dir), "--max-tokens", "3", input=typed, check=True)
    assert proc.stdout.count("anybind> ") == 2  # two answers
    assert f"{audio.rsplit('/', 1)[-1]} (audio)" in proc.stdout and "(conversation cleared)" in proc.stdout
    assert "missing.wav: file not found" in proc.stderr and "unknown command /frobnicate" in proc.stderr
    assert proc.stdout.index("(no attachments)") > proc.stdout.index("(conversation cleared)")


def test_python_api_generates_events_and_keeps_history(chat_dir, world):
    model = anybind.load(chat_dir)
    assert isinstance(model, ChatModel) and model.embed(["a handwritten seven"]).shape == (1, model.embed_dim)
    audio = read_manifest(world).select("test", has=("audio",))[0]["audio"]
    events = list(model.generate("Which digit is spoken here?", attachments=[audio], max_new_tokens=5))
    assert isinstance(events[-1], DoneEvent) and all(isinstance(e, TextEvent) for e in events[:-1])
    session = ChatSession(model, SamplingOptions(max_new_tokens=3))
    list(session.ask("Which digit is this?", [audio]))
    list(session.ask("And again?"))
    assert [t.role for t in session.turns] == ["user", "assistant", "user", "assistant"]
    assert session.describe_attachments() == [f"{audio.rsplit('/', 1)[-1]} (audio)"]


def test_over_long_conversations_drop_old_turns_then_refuse(chat_dir):
    model = anybind.load(chat_dir)  # the tiny LM has a 256-token context
    session = ChatSession(model, SamplingOptions(max_new_tokens=8))
    for _ in range(6):
        events = list(session.ask("seven " * 30))
    assert any(isinstance(e, NoticeEvent) and "dropped" in e.message for e in events)
    with pytest.raises(ContextOverflow, match="tokens"):
        list(model.generate("seven " * 400))
    proc = run_cli("chat", "seven " * 400, "--model", str(chat_dir))
    assert proc.returncode == 1 and "context" in proc.stderr and "Traceback" not in proc.stderr


def test_eval_chat_reports_accuracy_per_modality_and_projector(chat_dir, world, bound, tiny_lm):
    run_cli("train", "align-in", "--manifest", str(world), "--bound", str(bound), "--out", str(chat_dir),
            "--backbone", f"hf:{tiny_lm}", "--modality", "audio", "--steps", "5", "--batch-size", "4", check=True)
    proc = run_cli("eval", "chat", "--model", str(chat_dir), "--manifest", str(world), "--limit", "8", "--json", check=True)
    results = json.loads(proc.stdout)
    assert set(results) == {"image", "audio"}
    assert 0 <= results["audio"]["image_projector"] <= 1 and 0 <= results["audio"]["own_projector"] <= 1
    assert "own_projector" not in results["image"] and results["image"]["n_test"] == 8
    table = run_cli("eval", "chat", "--model", str(chat_dir), "--manifest", str(world), "--limit", "4", check=True).stdout
    assert "(emergent)" in table and "OWN PROJECTOR" in table


def test_bad_backbones_and_attachments_fail_clearly(tmp_path, world, bound, chat_dir):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path / "bert")
    with pytest.raises(CheckpointError, match="not a causal language model"):
        load_backbone(f"hf:{tmp_path / 'bert'}")
    proc = run_cli("train", "align-in", "--manifest", str(world), "--bound", str(bound), "--out", str(tmp_path / "x"),
                   "--backbone", f"hf:{tmp_path / 'nowhere'}")
    assert proc.returncode == 1 and "no such model directory" in proc.stderr and "Traceback" not in proc.stderr
    assert cli_in_process("train", "align-in", "--backbone", "nosuchlm", "--manifest", str(world), "--bound", str(bound),
                   "--out", str(tmp_path / "y")).returncode == 1

    # A file no installed plugin reads, with the plugin that would read it named.
    wav = read_manifest(world).select("test", has=("audio",))[0]["audio"]
    proc = run_cli("chat", "hi", "--attach", wav, "--model", str(chat_dir),
                   env={"ANYBIND_LOAD_PLUGINS": "anybind-image"})
    assert proc.returncode == 1 and "anybind install audio" in proc.stderr
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    proc = cli_in_process("chat", "hi", "--attach", broken, "--model", chat_dir)
    assert proc.returncode == 1 and "broken.png" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli_in_process("chat", "hi", "--model", bound)
    assert proc.returncode == 1 and "not an anybind chat model" in proc.stderr


def test_chat_runs_the_llama_without_transformers_and_answers_as_it(chat_dir, world):
    from anybind.models.llama import LlamaForCausalLM

    ours, theirs = ChatModel.from_pretrained(chat_dir), ChatModel.from_pretrained(chat_dir, transformers_lm=True)
    assert isinstance(ours.backbone.model, LlamaForCausalLM) and not isinstance(theirs.backbone.model, LlamaForCausalLM)
    audio = read_manifest(world).select("test", has=("audio",))[0]["audio"]
    answers = [[(e.type, getattr(e, "text", None)) for e in m.generate("Which digit is spoken here?", attachments=[audio],
                                                                       max_new_tokens=12)] for m in (ours, theirs)]
    assert answers[0] == answers[1] and answers[0][-1][0] == "done"


def test_int8_decoding_loads_decodes_and_answers_like_fp32(chat_dir, world):
    from torch.ao.nn.quantized.dynamic import Linear as Int8Linear

    from anybind.models.quantize import Int8Embedding

    fp32, int8 = ChatModel.from_pretrained(chat_dir), ChatModel.from_pretrained(chat_dir, quantize="int8")
    assert int8.backbone.quantization == "int8" and fp32.backbone.quantization is None
    layers = [m for m in int8.backbone.model.modules() if isinstance(m, Int8Linear)]
    assert len(layers) == 2 * 7 + 1  # every linear layer of the 2 blocks, and the head
    assert isinstance(int8.backbone.model.get_input_embeddings(), Int8Embedding) and int8.backbone.dtype == torch.float32
    audio = read_manifest(world).select("test", has=("audio",))[0]["audio"]
    logits = []
    for model in (fp32, int8):
        encoded = encode(model.backbone.tokenizer, model.conversation("Which digit is spoken here?", [audio]), 4)
        embeds, mask = input_embeddings(model.backbone, [encoded], [model.soft_tokens_for(encoded)], pad_left=True)
        logits.append(model.backbone.model(inputs_embeds=embeds, attention_mask=mask).logits[0])
    # Over every position: the tiny random LM's next-token logits at any one position lose more to
    # int8 than SmolLM2's (0.91-0.99 at the last one, by attachment), all of them together 0.993-0.995.
    assert torch.nn.functional.cosine_similarity(logits[0], logits[1], dim=-1).mean() > 0.98
    assert (logits[0].argmax(-1) == logits[1].argmax(-1)).float().mean() >= 0.85
    events = list(int8.generate("Which digit is spoken here?", attachments=[audio], max_new_tokens=8))
    assert events[-1].type == "done" and events[-1].tokens > 0
    with pytest.raises(CheckpointError, match="unknown quantization"):
        ChatModel.from_pretrained(chat_dir, quantize="int3")
