"""Benchmark: anybind's generation, fp32 and int8, against bare transformers `generate` (fp32);
time to first token; peak RSS of each.

    .venv/bin/python bench/chat_speed.py [--model runs/quickstart/chat] [--attach FILE] [--tokens 64] [--repeats 3]

Each side runs in its own process, so each peak RSS is its own: ``transformers`` loads the LM
with transformers' classes (``transformers_lm=True``, as training does) and times both
anybind's decode loop and transformers' ``generate`` on the same weights and input
embeddings; ``fp32`` loads the model as ``anybind chat`` does (its own Llama,
``anybind.models.llama``) and ``int8`` as ``--int8`` does, and time anybind's loop. All
decode greedily for exactly --tokens new tokens (end-of-turn may not stop them). Prints
tokens/s, the ratios to bare fp32 ``generate`` (targets: anybind's loop <= 1.05x its time,
int8 >= 1.5x its speed), how many tokens match ``generate``'s before the first difference,
the warm time to first token (target <= 3 s) and the peak RSS (int8 target <= 1.0 GB).
"""

import argparse
import json
import resource
import subprocess
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="runs/quickstart/chat")
parser.add_argument("--manifest", default="runs/quickstart/world")
parser.add_argument("--attach", help="Attachment (default: the first held-out audio clip of the manifest).")
parser.add_argument("--prompt", default="Which digit is spoken here? Answer in one sentence.")
parser.add_argument("--tokens", type=int, default=64)
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--side", choices=["transformers", "fp32", "int8"], help=argparse.SUPPRESS)  # one side, in a child process
args = parser.parse_args()


def measure(side: str) -> dict:
    import torch

    from anybind.chat import ChatModel
    from anybind.chat.conversation import encode, input_embeddings
    from anybind.chat.decode import decode_text
    from anybind.chat.events import SamplingOptions

    began = time.time()
    model = ChatModel.from_pretrained(args.model, quantize="int8" if side == "int8" else None,
                                      transformers_lm=side == "transformers")
    loaded = time.time() - began
    attach = args.attach
    list(model.generate(args.prompt, attachments=[attach], max_new_tokens=4))  # warm-up
    first = []
    for _ in range(args.repeats):
        start = time.time()
        for event in model.generate(args.prompt, attachments=[attach], max_new_tokens=args.tokens):
            if event.type == "text":
                first.append(time.time() - start)
                break
    turns = model.conversation(args.prompt, [attach])
    encoded = encode(model.backbone.tokenizer, turns, model.soft_tokens)
    embeds, mask = input_embeddings(model.backbone, [encoded], [model.soft_tokens_for(encoded)], pad_left=True)
    options = SamplingOptions(max_new_tokens=args.tokens)

    def ours():
        return torch.stack(list(decode_text(model.backbone.model, embeds, mask, options, stop_ids=())), dim=1)

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

    result = {"side": side, "load_s": loaded, "prompt_tokens": len(encoded.ids), "soft": model.soft_tokens,
              "threads": torch.get_num_threads(), "first_token_s": [min(first), max(first)]}
    with torch.inference_mode():
        ours()
        result["ours_s"], tokens = best_of(ours)
        result["tokens"] = tokens[0].tolist()
        if side == "transformers":
            bare()
            result["bare_s"], bare_tokens = best_of(bare)
            result["same_as_bare"] = torch.equal(tokens, bare_tokens)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


if args.side:
    print(json.dumps(measure(args.side)))
    sys.exit(0)

# The attachment is chosen here: reading the manifest (7k rows) is no part of chatting, and in a
# measured side it added 7 MiB to the peak.
if not args.attach:
    from anybind.data import read_manifest

    args.attach = read_manifest(args.manifest).select("test", has=("audio",))[0]["audio"]
sides = {}
for side in ("transformers", "fp32", "int8"):
    proc = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--attach", str(args.attach), "--side", side],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"the {side} side failed:\n{proc.stderr[-3000:]}")
    sides[side] = json.loads(proc.stdout.strip().splitlines()[-1])
hf, fp32, int8 = sides["transformers"], sides["fp32"], sides["int8"]
n, bare_s = args.tokens, hf["bare_s"]


def agreeing(tokens) -> int:
    return next((i for i, (a, b) in enumerate(zip(hf["tokens"], tokens)) if a != b), n)


print(f"model {args.model}; prompt {hf['prompt_tokens']} tokens ({hf['soft']} soft), {n} new tokens, "
      f"best of {args.repeats}, {hf['threads']} threads")
print(f"  transformers generate, fp32:         {bare_s:.3f}s ({n / bare_s:.1f} tok/s)")
print(f"  anybind on transformers' Llama fp32: {hf['ours_s']:.3f}s ({n / hf['ours_s']:.1f} tok/s)  "
      f"same tokens as generate: {hf['same_as_bare']}  time ratio {hf['ours_s'] / bare_s:.3f} (target <= 1.05)")
print(f"  anybind, its own Llama, fp32:        {fp32['ours_s']:.3f}s ({n / fp32['ours_s']:.1f} tok/s)  "
      f"time ratio {fp32['ours_s'] / bare_s:.3f}; first {agreeing(fp32['tokens'])} of {n} tokens as generate")
print(f"  anybind, its own Llama, int8:        {int8['ours_s']:.3f}s ({n / int8['ours_s']:.1f} tok/s)  "
      f"speed-up over generate fp32 {bare_s / int8['ours_s']:.2f}x (target >= 1.5x); "
      f"first {agreeing(int8['tokens'])} of {n} tokens as generate")
for side in (hf, fp32, int8):
    print(f"  {side['side']}: loaded in {side['load_s']:.1f}s, first token warm {side['first_token_s'][0]:.3f}-"
          f"{side['first_token_s'][1]:.3f}s (target <= 3 s), peak RSS {side['peak_rss_mib']:.0f} MiB"
          + (" (target <= 1024)" if side["side"] == "int8" else ""))
