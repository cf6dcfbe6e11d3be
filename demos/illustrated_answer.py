"""An illustrated answer: text and images interleaved in one stream, as a terminal and a web page.

    make quickstart                              # once: trains runs/quickstart
    python demos/illustrated_answer.py           # writes illustrated.html
    python demos/illustrated_answer.py "Draw the digit two, then say what comes after it." -o two.html

When the LM emits its generative token [IMG0], the other [IMG] tokens are forced, their
hidden states go through the output projector into the Stable Diffusion decoder, and the
image comes out as an event in its place; then the text goes on. The same events feed two
renderers: the terminal (text as it streams, each image's file in its place) and one
self-contained HTML page (images inline as data URIs), written whole at the end.
"""

import argparse
import io
import sys
from pathlib import Path

import anybind
from anybind.chat.events import SamplingOptions
from anybind.chat.render import HtmlRenderer, TerminalRenderer

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("prompt", nargs="?", default="Write one sentence about the number four, then draw it.")
parser.add_argument("--run", type=Path, default=Path("runs/quickstart"), help="folder with chat/ (and what it refers to)")
parser.add_argument("-o", "--output", type=Path, default=Path("illustrated.html"), help="the HTML page to write")
parser.add_argument("--max-tokens", type=int, default=96, help="longest answer, in tokens")
parser.add_argument("--seed", type=int, default=0, help="seed for the images")
args = parser.parse_args()

model = anybind.load(args.run / "chat")
if not model.outputs:
    sys.exit(f"{args.run / 'chat'} cannot draw: train its [IMG] tokens first (anybind train align-out --model {args.run / 'chat'})")

page = io.StringIO()
renderers = [
    TerminalRenderer(sys.stdout, images_dir=args.output.parent, prefix=args.output.stem),  # images saved as files
    HtmlRenderer(page),  # images inline
]
print(f"you> {args.prompt}\nanybind> ", end="", flush=True)
for renderer in renderers:
    renderer.begin_turn(args.prompt)

images = 0
for event in model.generate(args.prompt, max_new_tokens=args.max_tokens, seed=args.seed):
    images += event.type == "image"
    for renderer in renderers:
        renderer.render([event])  # each renderer writes the event as it arrives

for renderer in renderers:
    renderer.close()
args.output.write_text(page.getvalue(), encoding="utf-8")
print(f"wrote {args.output} ({images} image{'s' if images != 1 else ''} inline)")
if not images:
    print("the model answered without a drawing this time; try another --seed or ask it to draw")
