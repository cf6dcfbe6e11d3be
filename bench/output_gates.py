"""Probe: which outputs a chat model makes for each kind of request, and how sure its gates were.

    .venv/bin/python bench/output_gates.py [--model runs/quickstart/chat]

Greedy answers to each request template below for every label of the world (its ``world.json``
beside the chat model's run), made with one sampling step per output (what an output shows is
not judged here, only that one was made). Prints per template how many answers made each
output, and the mean of the highest probability each output's first token reached while an
answer was decoded: a request that asks for speech should reach near 1 for audio and near 0
for images, and one that asks for words alone near 0 for both.
"""

import argparse
from collections import Counter
from pathlib import Path

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="runs/quickstart/chat")
parser.add_argument("--world", help="Default: the world folder beside the model (runs/quickstart/world).")
args = parser.parse_args()

import anybind  # noqa: E402
import anybind.chat.decode as decode  # noqa: E402
from anybind.chat.batch import greedy_answers  # noqa: E402
from anybind.data import read_manifest  # noqa: E402

REQUESTS = (  # (what it asks for, template): {l} the label, {s} the world's subject ("the number four")
    ("image", "Draw the {kind} {l}."), ("image", "Can you show me a {l}?"),
    ("text, image", "Write one sentence about {s}, then draw it."),
    ("audio", "Say {s}."), ("audio", "Could you say {l} for me?"),
    ("text", "Write one sentence about {s}."), ("text", "Tell me something about {s}."),
)

model = anybind.load(args.model)
world = read_manifest(args.world or Path(args.model).parent / "world")
names = list(model.outputs)  # the order of the gate columns (OutputVocab's)
peaks: list[torch.Tensor] = []
real_sample = decode.sample


def watching_sample(logits, options, generator):
    """The decode loop's own sampler, recording each output's first-token probability on the way."""
    peaks.append(torch.softmax(logits.float(), dim=-1)[:, -len(names):])
    return real_sample(logits, options, generator)


decode.sample = watching_sample
print(f"{args.model}: outputs {', '.join(names)}")
for wanted, template in REQUESTS:
    prompts = [template.format(**world.fill(label)) for label in world.labels]
    peaks.clear()
    answers = greedy_answers(model, [model.conversation(p) for p in prompts], max_new_tokens=32, make=True, steps=1,
                             max_outputs=len(names))
    peak = torch.stack(peaks).amax(0).mean(0)  # per output: the answers' mean of their highest probability
    made = Counter(m for a in answers for m in dict.fromkeys(a.modalities)) + Counter(
        {"none": sum(not a.modalities for a in answers)})
    print(f"{template:48s} asks for {wanted:12s} made: " + ", ".join(f"{k} {v}" for k, v in sorted(made.items()) if v)
          + " | mean peak gate: " + ", ".join(f"{n} {p:.2f}" for n, p in zip(names, peak.tolist())))
    print(f"    e.g. {prompts[4]!r} -> {answers[4].text[:70]!r}")
