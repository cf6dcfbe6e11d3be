"""Benchmark: image generation through anybind vs the bare diffusers pipeline.

    .venv/bin/python bench/generate_speed.py [--decoder runs/decoder] [--steps 25] [--batch 4] [--repeats 5]
    .venv/bin/python bench/generate_speed.py --chat runs/chat    # also: one drawing answer end to end

Both sides get the *same* conditioning (the decoder's text encoding of a caption), the same
unconditional embedding, steps, guidance and seed, and must return identical pixels.
Prints each side's best time and the ratio (target <= 1.05). With --chat, also the time of
a whole "Draw ..." answer (prefill, [IMG] tokens, projection, diffusion) and its parts.
"""

import argparse
import time

import numpy as np
import torch

parser = argparse.ArgumentParser()
parser.add_argument("--decoder", default="runs/decoder")
parser.add_argument("--chat", help="A chat model trained with align-out: time one drawing answer too.")
parser.add_argument("--prompt", default="a handwritten seven")
parser.add_argument("--steps", type=int, default=25)
parser.add_argument("--batch", type=int, default=4)
parser.add_argument("--repeats", type=int, default=10)
args = parser.parse_args()

from anybind.models.decoders import load_decoder  # noqa: E402

decoder = load_decoder(args.decoder)
pipeline = decoder.pipeline
cond = decoder.encode_prompt([args.prompt] * args.batch)
negative = decoder.negative().expand(args.batch, -1, -1)
options = dict(guidance=decoder.config.guidance, steps=args.steps, seed=0)
print(f"decoder {args.decoder}: {type(pipeline).__name__}, conditioning {tuple(cond.shape[1:])}, "
      f"{decoder.config.height}x{decoder.config.width}, {args.steps} steps, batch {args.batch}, "
      f"{torch.get_num_threads()} threads, device {decoder.device}")


def bare():
    return pipeline(prompt_embeds=cond.to(decoder.device, decoder.dtype),
                    negative_prompt_embeds=negative.to(decoder.device, decoder.dtype),
                    guidance_scale=options["guidance"], num_inference_steps=args.steps,
                    generator=torch.Generator().manual_seed(0), height=decoder.config.height,
                    width=decoder.config.width, output_type="pil").images


def ours():
    return decoder.decode(cond, **options)


def best(fn):
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        images = fn()
        times.append(time.perf_counter() - start)
    return min(times), images


ours()  # warm-up
bare()
t_bare, bare_images = best(bare)
t_ours, our_images = best(ours)
same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(our_images, bare_images))
print(f"bare diffusers pipeline: {t_bare:.3f}s")
print(f"anybind decode:          {t_ours:.3f}s   identical pixels: {same}")
print(f"ratio anybind / bare: {t_ours / t_bare:.3f} (target <= 1.05)")

if args.chat:
    from anybind.chat import ChatModel

    model = ChatModel.from_pretrained(args.chat, decoder=args.decoder)
    list(model.generate("Draw the digit seven.", max_new_tokens=4, max_images=1))  # warm-up
    start = time.perf_counter()
    first_image = None
    for event in model.generate("Draw the digit seven.", max_new_tokens=24, max_images=1):
        if event.type == "image" and first_image is None:
            first_image = time.perf_counter() - start
    total = time.perf_counter() - start
    shown = f"{first_image:.2f}s" if first_image is not None else "no image drawn"
    print(f"chat 'Draw the digit seven.': first image after {shown}, whole answer {total:.2f}s "
          f"({event.tokens} tokens)")
