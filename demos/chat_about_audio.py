"""Chat about a recording: ask which digit is spoken, then follow up in the same conversation.

    make quickstart                            # once: trains runs/quickstart
    python demos/chat_about_audio.py           # a held-out voice saying "seven"
    python demos/chat_about_audio.py --digit two --follow-up "Now draw it."

The recording goes through the audio tower into the shared space and from there through
an input projector into the LM as a few soft tokens, where the attachment sits in the
turn. The answer streams as events (what ``model.generate`` yields); a ``ChatSession``
keeps the conversation, so the follow-up can refer to the recording without attaching it.
"""

import argparse
import sys
from pathlib import Path

import anybind
from anybind.chat import ChatSession
from anybind.chat.events import SamplingOptions
from anybind.data import read_manifest

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--run", type=Path, default=Path("runs/quickstart"), help="folder with world/ and chat/")
parser.add_argument("--digit", default="seven", help="which held-out recording to attach (a label of the world)")
parser.add_argument("--follow-up", default="Name it in one word.", help="the second question")
parser.add_argument("--max-tokens", type=int, default=64, help="longest answer, in tokens")
args = parser.parse_args()

manifest = read_manifest(args.run / "world")
recordings = [r["audio"] for r in manifest.select("test", has=("audio",)) if r.get("label") == args.digit]
if not recordings:
    sys.exit(f"{manifest.path}: no held-out audio labelled {args.digit!r}; labels: {', '.join(manifest.labels)}")
model = anybind.load(args.run / "chat")  # a chat model: towers + LM backbone + projectors
session = ChatSession(model, SamplingOptions(max_new_tokens=args.max_tokens))  # greedy
drawn = []  # images saved so far


def ask(question: str, attachments=()) -> None:
    """Stream one answer to the terminal, event by event (read them all: the session records
    the turn in its history once the answer is complete)."""
    print(f"\nyou> {question}" + "".join(f" [{Path(a).name}]" for a in attachments))
    print("anybind> ", end="", flush=True)
    for event in session.ask(question, attachments):
        if event.type == "text":  # a piece of the answer, as soon as it is decoded
            print(event.text, end="", flush=True)
        elif event.type == "image":  # a model trained with align-out may draw
            path = f"chat-image-{len(drawn) + 1}.png"
            event.image.save(path)
            drawn.append(path)
            print(f"[image: {path}]", end="", flush=True)
        elif event.type == "notice":  # e.g. old turns dropped to fit the context
            print(f"[{event.message}]", file=sys.stderr)
        elif event.type == "done":  # the whole answer, token count and timings
            print(f"\n({event.tokens} tokens in {event.seconds:.1f}s; the prompt, history included, "
                  f"was {event.usage['prompt_tokens']} tokens)")


ask("Which digit is spoken here?", [recordings[0]])
ask(args.follow_up)  # no attachment: the recording is still in the conversation
print(f"\n(the recording was {Path(recordings[0]).name}, labelled {args.digit!r})")
