"""Benchmark: anybind's generation vs bare transformers `generate`, time to first token, peak RSS.

    .venv/bin/python bench/chat_speed.py [--model runs/chat] [--attach FILE] [--tokens 64] [--repeats 3]

Both sides decode greedily from the *same* input embeddings (prompt + the attachment's soft
tokens, through the same chat template) for exactly --tokens new tokens (end-of-turn is not
allowed to stop either), on the same weights. Prints each side's best time, their ratio
(target <= 1.05), the time to first token of a warm `ChatModel.generate` (attachment
loading, embedding, projection and prefill included; target <= 3 s) and the peak RSS.
"""

import argparse
import resource
import time
from pathlib import Path

import torch

import anybind
from anybind.chat.conversation import encode, input_embeddings
from anybind.chat.decode import decode_text as decode
from anybind.chat.events import SamplingOptions
from anybind.data import read_manifest

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="runs/chat")
parser.add_argument("--manifest", default="runs/world")
parser.add_argument("--attach", help="Attachment (default: the first held-out audio clip of the manifest).")
parser.add_argument("--prompt", default="Which digit is spoken here? Answer in one sentence.")
parser.add_argument("--tokens", type=int, default=64)
parser.add_argument("--repeats", type=int, default=3)
args = parser.parse_args()

began = time.time()
model = anybind.load(args.model)
load_seconds = time.time() - began
attach = args.attach or read_manifest(args.manifest).select("test", has=("audio",))[0]["audio"]
print(f"model {args.model} (backbone {model.backbone.reference}) loaded in {load_seconds:.2f}s; "
      f"attachment {Path(attach).name}; {torch.get_num_threads()} threads, device {model.backbone.device}")

# Time to first token of a warm model: from the call to the first text event.
list(model.generate(args.prompt, attachments=[attach], max_new_tokens=4))  # warm-up
first = []
for _ in range(args.repeats):
    start = time.time()
    for event in model.generate(args.prompt, attachments=[attach], max_new_tokens=args.tokens):
        if event.type == "text":
            first.append(time.time() - start)
            break

# Same inputs for both decoders.
turns = model.conversation(args.prompt, [attach])
encoded = encode(model.backbone.tokenizer, turns, model.soft_tokens)
embeds, mask = input_embeddings(model.backbone, [encoded], [model.soft_tokens_for(encoded)], pad_left=True)
options = SamplingOptions(max_new_tokens=args.tokens)


def ours():
    return torch.stack(list(decode(model.backbone.model, embeds, mask, options, stop_ids=())), dim=1)


def bare():
    out = model.backbone.model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=args.tokens,
                                        min_new_tokens=args.tokens, do_sample=False, eos_token_id=None,
                                        pad_token_id=model.backbone.tokenizer.pad_token_id)
    return out[:, -args.tokens:]


def best_of(fn):
    times, result = [], None
    for _ in range(args.repeats):
        start = time.time()
        result = fn()
        times.append(time.time() - start)
    return min(times), result


with torch.inference_mode():
    ours(), bare()  # warm both paths
    t_bare, tokens_bare = best_of(bare)
    t_ours, tokens_ours = best_of(ours)
same = torch.equal(tokens_ours, tokens_bare)
peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"prompt {len(encoded.ids)} tokens ({model.soft_tokens} soft), {args.tokens} new tokens, best of {args.repeats}")
print(f"  transformers generate: {t_bare:.3f}s  ({args.tokens / t_bare:.1f} tok/s)")
print(f"  anybind decode loop:   {t_ours:.3f}s  ({args.tokens / t_ours:.1f} tok/s)  same tokens: {same}")
print(f"  ratio anybind/transformers: {t_ours / t_bare:.3f} (target <= 1.05)")
print(f"time to first token, warm: {min(first):.3f}s best, {max(first):.3f}s worst (target <= 3 s)")
print(f"peak RSS: {peak_mib:.0f} MiB")
