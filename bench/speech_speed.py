"""Benchmark: speech generation through anybind vs the bare decoder (its diffusers pipeline, then the vocoder).

    .venv/bin/python bench/speech_speed.py [--decoder runs/quickstart/decoder-audio] [--steps 25] [--batch 4]
    .venv/bin/python bench/speech_speed.py --chat runs/quickstart/chat   # also: one spoken answer end to end

Both sides get the same conditioning (the decoder's encoding of a caption), unconditional
embedding, steps, guidance and seed, and must return identical samples. Prints each side's
best time and the ratio (target <= 1.05); with --chat, the time of a whole "Say ..." answer.
"""

import argparse
import time

import numpy as np
import torch

parser = argparse.ArgumentParser()
parser.add_argument("--decoder", default="runs/quickstart/decoder-audio")
parser.add_argument("--chat", help="A chat model with an audio output: time one spoken answer too.")
parser.add_argument("--prompt", default="the spoken word seven")
parser.add_argument("--steps", type=int, default=25)
parser.add_argument("--batch", type=int, default=4)
parser.add_argument("--repeats", type=int, default=10)
args = parser.parse_args()

from anybind.models.decoders import load_decoder  # noqa: E402

decoder = load_decoder(args.decoder, modality="audio")
pipeline, codec = decoder.pipeline, decoder.codec
cond = decoder.encode_prompt([args.prompt] * args.batch)
negative = decoder.negative().expand(args.batch, -1, -1)
guidance = decoder.config.guidance
print(f"decoder {args.decoder}: {type(pipeline).__name__}, conditioning {tuple(cond.shape[1:])}, "
      f"mel {codec.config.n_mels}x{codec.config.frames}, {args.steps} steps, batch {args.batch}, "
      f"{torch.get_num_threads()} threads, device {decoder.device}")


def bare():
    mels = pipeline(cond.to(decoder.device, decoder.dtype), negative.to(decoder.device, decoder.dtype),
                    height=codec.config.n_mels, width=codec.config.frames, guidance_scale=guidance,
                    num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0))
    return [w.numpy() for w in codec.decode(mels.float().cpu(), seed=0)]


def ours():
    return [clip.samples for clip in decoder.decode(cond, guidance=guidance, steps=args.steps, seed=0)]


def best(fn):
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        made = fn()
        times.append(time.perf_counter() - start)
    return min(times), made


ours()  # warm-up
bare()
t_bare, bare_clips = best(bare)
t_ours, our_clips = best(ours)
same = all(np.array_equal(a, b) for a, b in zip(our_clips, bare_clips))
print(f"bare pipeline + vocoder: {t_bare:.3f}s")
print(f"anybind decode:          {t_ours:.3f}s   identical samples: {same}")
print(f"ratio anybind / bare: {t_ours / t_bare:.3f} (target <= 1.05)")

if args.chat:
    from anybind.chat import ChatModel

    model = ChatModel.from_pretrained(args.chat)
    list(model.generate("Say the number seven.", max_new_tokens=4, max_images=1))  # warm-up
    start = time.perf_counter()
    first = None
    for event in model.generate("Say the number seven.", max_new_tokens=24, max_images=1):
        if event.type == "audio" and first is None:
            first = time.perf_counter() - start
    total = time.perf_counter() - start
    shown = f"{first:.2f}s" if first is not None else "nothing spoken"
    print(f"chat 'Say the number seven.': first sound {shown}, whole answer {total:.2f}s")
