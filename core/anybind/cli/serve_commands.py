"""``anybind serve``: the chat page and the OpenAI-compatible API of one loaded model."""

from __future__ import annotations

import ipaddress
import time

import click

from anybind.cli.app import cli, int8_option
from anybind.layout import DEFAULT_RUN


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@cli.command()
@click.option("--model", "model_dir", default=str(DEFAULT_RUN.chat), show_default=True, type=click.Path(),
              help="Chat model directory.")
@click.option("--bind", "bind_dir", type=click.Path(), help="Bound model for /v1/embeddings and /v1/retrieve "
              "(default: the chat model's own).")
@click.option("--index", "index_dir", type=click.Path(), help="A retrieval index (anybind index build) for /v1/retrieve.")
@click.option("--decoder", help="Draw with this decoder instead of the model's own (a directory or sd:PATH).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on; any other than "
              "localhost needs --api-key.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--api-key", envvar="ANYBIND_API_KEY", help="Require 'Authorization: Bearer KEY' on every API route "
              "(or set ANYBIND_API_KEY).")
@click.option("--max-upload-mb", type=click.FloatRange(0, min_open=True), default=25.0, show_default=True,
              help="Largest attachment; a larger one is refused with 413.")
@click.option("--max-tokens", type=click.IntRange(1), default=256, show_default=True,
              help="Answer length when a request gives none.")
@click.option("--max-images", type=click.IntRange(0), default=4, show_default=True, help="At most this many outputs per answer.")
@click.option("--image-steps", type=click.IntRange(1, 1000), help="Sampling steps per image (default: the decoder's).")
@int8_option
def serve(model_dir, bind_dir, index_dir, decoder, host, port, api_key, max_upload_mb, max_tokens, max_images,
          image_steps, quantize):
    """Serve a chat model: a chat page at / and an OpenAI-compatible API under /v1.

    \b
    anybind serve                         then open http://127.0.0.1:8000
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"model": "anybind", "messages": [{"role": "user", "content": "Draw the number four."}]}'
    """
    from pathlib import Path

    if not is_loopback(host) and not api_key:
        raise click.UsageError(f"--host {host} opens the model to other machines: give --api-key KEY "
                               "(or set ANYBIND_API_KEY), or keep the default 127.0.0.1")
    began = time.time()
    import uvicorn

    from anybind.serve import ModelHost, ServeSettings, create_app

    settings = ServeSettings(Path(model_dir), bind=Path(bind_dir) if bind_dir else None,
                             index=Path(index_dir) if index_dir else None, decoder=decoder, api_key=api_key,
                             max_upload_bytes=int(max_upload_mb * 2**20), max_tokens=max_tokens,
                             max_images=max_images, image_steps=image_steps, quantize=quantize)
    model_host = ModelHost.load(settings)
    app = create_app(model_host)
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    click.secho(f"anybind serve: {model_dir} loaded in {time.time() - began:.1f}s; reads "
                f"{', '.join(model_host.chat.modalities)}; makes {', '.join(model_host.chat.outputs) or 'text only'}",
                err=True)
    click.secho(f"  chat page:  http://{shown}:{port}/\n  OpenAI API: http://{shown}:{port}/v1  (docs at /docs)"
                + ("\n  API key required (Authorization: Bearer ...)" if api_key else ""), err=True)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)
