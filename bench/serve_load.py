"""Load on a live ``anybind serve``: concurrent clients, each sending mixed chat requests
(a text question, a spoken digit to name, a digit to draw) through the OpenAI-compatible API.
Prints p50/p95 latency per kind and overall, throughput, and every error.

    python bench/serve_load.py                        # starts anybind serve on runs/quickstart/chat
    python bench/serve_load.py --url http://127.0.0.1:8000 --api-key KEY   # a server already running
    python bench/serve_load.py --clients 8 --requests 10

Requests go to 127.0.0.1 only and their number is bounded (clients x requests).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int) -> tuple[subprocess.Popen, float]:
    began = time.time()
    anybind = Path(sys.executable).parent / "anybind"
    proc = subprocess.Popen([str(anybind), "serve", "--model", model, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"anybind serve exited:\n{proc.stderr.read()}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
            return proc, time.time() - began
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("anybind serve did not start in 60 s")


def requests_for(kind: str, rng: random.Random, wavs: list[Path]) -> dict:
    digit = rng.randrange(10)
    if kind == "text":
        content = f"Write one sentence about the number {WORDS[digit]}."
    elif kind == "draw":
        content = f"Draw the number {WORDS[digit]}."
    else:
        wav = rng.choice(wavs)
        content = [{"type": "text", "text": "Which digit is spoken here?"},
                   {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav.read_bytes()).decode(), "format": "wav"}}]
    return {"model": "anybind", "max_tokens": 64, "stream": kind != "audio",
            "messages": [{"role": "user", "content": content}]}


def send(url: str, body: dict, key: str | None) -> tuple[float, float | None, str | None]:
    """(seconds to the whole answer, seconds to the first content chunk, error)."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(f"{url}/v1/chat/completions", json.dumps(body).encode(), headers)
    began, first = time.time(), None
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            if not body["stream"]:
                answer = json.loads(response.read())
                return time.time() - began, None, None if answer["choices"][0]["message"]["content"] else "empty answer"
            for line in response:
                if line.startswith(b"data: ") and line.strip() != b"data: [DONE]":
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        return time.time() - began, first, chunk["error"]["message"]
                    if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        first = time.time() - began
        return time.time() - began, first, None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        detail = exc.read().decode()[:200] if isinstance(exc, urllib.error.HTTPError) else str(exc)
        return time.time() - began, first, f"{type(exc).__name__}: {detail}"


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="A running server (default: start one on --model).")
    parser.add_argument("--model", default="runs/quickstart/chat")
    parser.add_argument("--world", default="runs/quickstart/world", help="Where the spoken digits come from.")
    parser.add_argument("--api-key", default=os.environ.get("ANYBIND_API_KEY"))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=10, help="Per client.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    wavs = sorted(Path(args.world, "audio").rglob("*.wav"))[:200]
    if not wavs:
        raise SystemExit(f"{args.world}: no wav files (make quickstart builds the sample world)")
    proc = None
    url = args.url
    if url is None:
        port = free_port()
        proc, ready = start_server(args.model, port)
        url = f"http://127.0.0.1:{port}"
        print(f"anybind serve ready in {ready:.1f}s")
    kinds = ["text", "audio", "draw"]
    results: dict[str, list] = {k: [] for k in kinds}
    lock = threading.Lock()

    def client(c: int) -> None:
        rng = random.Random(args.seed * 1000 + c)
        for r in range(args.requests):
            kind = kinds[(c + r) % len(kinds)]
            outcome = send(url, requests_for(kind, rng, wavs), args.api_key)
            with lock:
                results[kind].append(outcome)

    began = time.time()
    try:
        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    wall = time.time() - began
    every = [r for rs in results.values() for r in rs]
    errors = [(k, r[2]) for k, rs in results.items() for r in rs if r[2]]
    print(f"{args.clients} clients x {args.requests} requests = {len(every)} in {wall:.1f}s "
          f"({len(every) / wall:.2f} requests/s), errors: {len(errors)}")
    print(f"{'kind':<8}{'n':>4}{'p50 s':>9}{'p95 s':>9}{'first p50':>11}")
    for kind, rs in [*results.items(), ("all", every)]:
        if not rs:
            continue
        latencies = [r[0] for r in rs]
        firsts = [r[1] for r in rs if r[1] is not None]
        first = f"{percentile(firsts, 50):>11.2f}" if firsts else f"{'-':>11}"
        print(f"{kind:<8}{len(rs):>4}{percentile(latencies, 50):>9.2f}{percentile(latencies, 95):>9.2f}{first}")
    for kind, error in errors:
        print(f"error ({kind}): {error}")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
