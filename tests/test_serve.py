"""anybind serve: the OpenAI-compatible API against a live server on a free localhost port,
with the official ``openai`` client, and the tiny test models (a random LM, a tiny trained SD).

The served model reads every first-party modality (the small world's image and audio towers,
with video and point cloud towers bound into a copy) and always draws one image per answer,
so every answer has an image in its place.
"""

import base64
import http.client
import json
import os
import re
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import openai
import pytest
from PIL import Image

import anybind
from anybind.chat import ChatSession
from anybind.chat.events import SamplingOptions
from conftest import Server, always_draws, run_cli

SERVE_ARGS = ("--max-images", "1", "--image-steps", "2", "--max-upload-mb", "0.25", "--max-tokens", "24")


@pytest.fixture(scope="module")
def served_model(drawing_chat, small_bound, every_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    bound = root / "bind"
    shutil.copytree(small_bound, bound)
    run_cli("train", "bind", "--manifest", str(every_world.path), "--out", str(bound), "--modality", "video",
            "--modality", "pointcloud", "--steps", "4", "--batch-size", "8", check=True)
    return always_draws(drawing_chat, root / "chat", bound=bound)


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    # ANYBIND_SERVE_MODEL=runs/quickstart/chat serves a trained model instead (how docs/serve.png was made)
    model = os.environ.get("ANYBIND_SERVE_MODEL")
    args = () if model else SERVE_ARGS
    running = Server(Path(model) if model else request.getfixturevalue("served_model"),
                     tmp_path_factory.mktemp("server"), *args)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def sample(every_world, modality) -> Path:
    return Path(every_world.select(has=(modality,))[0][modality])


def b64(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def file_part(path: Path, name: str | None = None) -> dict:
    return {"type": "file", "file": {"filename": name or Path(path).name, "file_data": b64(path)}}


def audio_part(path: Path) -> dict:
    return {"type": "input_audio", "input_audio": {"data": b64(path), "format": "wav"}}


def ask(text, *parts) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}, *parts]}]


def get(server, route, key=None):
    request = urllib.request.Request(server.url + route, headers={"Authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_models_health_and_the_page_say_what_the_server_reads(server, served_model):
    models = get(server, "/v1/models")["data"]
    assert [m["id"] for m in models] == [str(served_model)]
    info = models[0]["anybind"]
    assert {"image", "audio", "video", "pointcloud"} <= set(info["reads"]) and ".wav" in info["reads"]["audio"]
    assert info["makes"] == ["image"]
    assert get(server, "/health")["status"] == "ok"
    with urllib.request.urlopen(server.url + "/", timeout=30) as response:
        page = response.read().decode()
    assert '"reads"' in page and "/static/app.js" in page
    assert server.ready_seconds < 60


def test_whole_and_streamed_answers_agree_and_carry_the_image(client, every_world):
    messages = ask("Which digit is spoken here?", audio_part(sample(every_world, "audio")))
    whole = client.chat.completions.create(model="anybind", messages=messages)
    message = whole.choices[0].message
    outputs = message.model_extra["anybind"]["outputs"]
    assert len(outputs) == 1 and outputs[0]["type"] == "image" and outputs[0]["mime"] == "image/png"
    image = Image.open(__import__("io").BytesIO(base64.b64decode(outputs[0]["data"])))
    assert image.size == (16, 16)
    assert f"![image 1](data:image/png;base64,{outputs[0]['data']})" in message.content
    assert message.content.index("![image 1]") == outputs[0]["offset"] + 2  # after the blank line
    assert whole.usage.completion_tokens > 0 and whole.choices[0].finish_reason in ("stop", "length")

    chunks = list(client.chat.completions.create(model="anybind", messages=messages, stream=True,
                                                 stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == message.content
    drawn = [c.choices[0].delta.model_extra["anybind"]["outputs"] for c in chunks
             if c.choices and (c.choices[0].delta.model_extra or {}).get("anybind", {}).get("outputs")]
    assert len(drawn) == 1 and drawn[0][0]["data"] == outputs[0]["data"]
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 2  # text came in pieces
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens


@pytest.mark.parametrize("modality", ["image", "audio", "video", "pointcloud"])
def test_an_attachment_of_each_first_party_modality_is_read(client, every_world, modality):
    path = sample(every_world, modality)
    part = ({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(path)}"}} if modality == "image"
            else audio_part(path) if modality == "audio" else file_part(path))
    plain = client.chat.completions.create(model="anybind", messages=ask("What is this?"))
    attached = client.chat.completions.create(model="anybind", messages=ask("What is this?", part))
    assert attached.usage.prompt_tokens > plain.usage.prompt_tokens  # the attachment's soft tokens and mark


def test_history_is_read_back_as_chat_session_keeps_it(client, served_model, every_world):
    """Two turns over the API (the first answer sent back with its image as Markdown) answer as
    a ChatSession does in-process."""
    wav = sample(every_world, "audio")
    first = client.chat.completions.create(model="anybind", messages=ask("Which digit is spoken here?", audio_part(wav)))
    history = ask("Which digit is spoken here?", audio_part(wav)) + [
        {"role": "assistant", "content": first.choices[0].message.content}, *ask("Now draw it.")]
    second = client.chat.completions.create(model="anybind", messages=history)

    session = ChatSession(anybind.load(served_model), SamplingOptions(max_new_tokens=24), image_steps=2, max_images=1)
    texts = []
    for prompt, attachments in [("Which digit is spoken here?", [wav]), ("Now draw it.", [])]:
        events = list(session.ask(prompt, attachments))
        texts.append(events[-1].text)
    assert [t.attachments[0].modality for t in session.turns if t.role == "assistant"] == ["image", "image"]

    def text_of(content):
        return re.sub(r"\n\n!\[image \d+\]\(data:[^)]*\)\n\n", "", content)

    assert text_of(first.choices[0].message.content) == texts[0]
    assert text_of(second.choices[0].message.content) == texts[1]


def test_bad_uploads_are_4xx_naming_the_file_and_the_server_goes_on(client, server, tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF not really a wave file")
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="anybind", messages=ask("Which digit?", file_part(corrupt, "my voice.wav")))
    message = bad.value.body["message"]
    assert message.startswith("my voice.wav: ") and "anybind-request" not in message and str(server.tmp) not in message

    with pytest.raises(openai.APIStatusError) as unknown:
        client.chat.completions.create(model="anybind", messages=ask("What is it?", file_part(corrupt, "notes.docx")))
    assert unknown.value.status_code == 415 and "notes.docx" in unknown.value.body["message"]

    big = tmp_path / "big.wav"
    big.write_bytes(b"\0" * 300_000)  # over --max-upload-mb 0.25
    with pytest.raises(openai.APIStatusError) as large:
        client.chat.completions.create(model="anybind", messages=ask("Which digit?", file_part(big)))
    assert large.value.status_code == 413 and "big.wav" in large.value.body["message"]
    huge = {"type": "file", "file": {"filename": "huge.wav", "file_data": "A" * 2_000_000}}
    with pytest.raises(openai.APIStatusError) as body_limit:  # refused by its size before it is read
        client.chat.completions.create(model="anybind", messages=ask("Which digit?", huge))
    assert body_limit.value.status_code == 413

    with pytest.raises(openai.BadRequestError) as too_long:  # the tiny LM's context is 256 tokens
        client.chat.completions.create(model="anybind", messages=ask(" ".join(["seven"] * 400)))
    assert too_long.value.body["code"] == "context_length_exceeded"

    answer = client.chat.completions.create(model="anybind", messages=ask("Which digit is this?"))
    assert answer.choices[0].message.content


@pytest.mark.parametrize("part", [
    {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}},
    {"type": "image_url", "image_url": {"url": "/etc/hostname"}},
    {"type": "file", "file": {"filename": "x.wav", "file_data": "/etc/hostname"}},
    {"type": "input_audio", "input_audio": {"data": "../../etc/hostname", "format": "wav"}},
], ids=["file-url", "image-path", "file-path", "audio-path"])
def test_a_request_can_never_name_a_file_on_the_server(client, part):
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="anybind", messages=ask("What is this?", part))
    assert "content, not paths" in bad.value.body["message"]


def test_file_names_cannot_climb_out_and_uploads_are_deleted(client, server, every_world):
    wav = sample(every_world, "audio")
    answer = client.chat.completions.create(model="anybind", messages=ask("Which digit?", file_part(wav, "../../../x.wav")))
    assert answer.choices[0].message.content
    assert not (server.tmp.parent.parent / "x.wav").exists()
    time.sleep(0.5)
    assert list(server.tmp.iterdir()) == []  # every request's folder is gone


def test_embeddings_of_text_and_files_are_the_models_own(client, server, served_model, every_world):
    image, wav = sample(every_world, "image"), sample(every_world, "audio")
    result = client.embeddings.create(model="anybind", input=["a handwritten seven"])  # the client asks for base64
    ours = anybind.load(served_model).embed(["a handwritten seven", image, wav]).numpy()
    assert np.allclose(result.data[0].embedding, ours[0], atol=1e-5)
    body = json.dumps({"model": "anybind", "encoding_format": "float",
                       "input": ["a handwritten seven", file_part(image), audio_part(wav)]}).encode()
    request = urllib.request.Request(server.url + "/v1/embeddings", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        data = json.loads(response.read())["data"]
    assert [d["modality"] for d in data] == ["text", "image", "audio"]
    assert np.allclose(np.array([d["embedding"] for d in data]), ours, atol=1e-5)


def test_concurrent_requests_queue_without_mixing(client, server, every_world):
    """Six clients at once, each with its own attachment, get the answers they get alone."""
    requests = [ask("Which digit is spoken here?", audio_part(Path(r["audio"])))
                for r in every_world.select(has=("audio",))[:3]]
    requests += [ask("What is this?", file_part(Path(r["image"]))) for r in every_world.select(has=("image",))[:3]]
    alone = [client.chat.completions.create(model="anybind", messages=m).choices[0].message.content for m in requests]
    together = [None] * len(requests)

    def run(i):
        together[i] = client.chat.completions.create(model="anybind", messages=requests[i]).choices[0].message.content

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert together == alone
    assert get(server, "/health")["generations"]["failed"] == 0


def test_a_client_that_disconnects_stops_its_generation(server):
    before = get(server, "/health")["generations"]
    body = json.dumps({"model": "anybind", "stream": True, "max_tokens": 200,
                       "messages": [{"role": "user", "content": "Tell me a long story about every digit."}]})
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"data: ")  # the stream has begun
    conn.sock.close()
    conn.close()
    for _ in range(100):
        after = get(server, "/health")["generations"]
        if after["stopped"] > before["stopped"] and after["running"] == 0:
            break
        time.sleep(0.1)
    assert after["stopped"] == before["stopped"] + 1 and after["running"] == 0
    assert "stopped a generation" in server.log.read_text()


def test_an_api_key_is_checked_on_every_api_route(served_model, tmp_path):
    keyed = Server(served_model, tmp_path / "keyed", *SERVE_ARGS, "--api-key", "s3cret")
    try:
        with pytest.raises(openai.AuthenticationError) as wrong:
            openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="wrong", max_retries=0).models.list()
        assert wrong.value.body["code"] == "invalid_api_key"
        good = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="s3cret", max_retries=0)
        assert good.chat.completions.create(model="anybind", messages=ask("Which digit?")).choices
        for route, key in [("/health", None), ("/v1/models", None), ("/v1/models", "wrong")]:
            with pytest.raises(urllib.error.HTTPError) as refused:
                get(keyed, route, key=key)
            assert refused.value.code == 401 and refused.value.headers["WWW-Authenticate"] == "Bearer"
        assert get(keyed, "/health", key="s3cret")["status"] == "ok"
        with urllib.request.urlopen(keyed.url + "/", timeout=30) as page:  # the page itself asks for the key
            assert page.status == 200
    finally:
        keyed.stop()


def test_listening_beyond_localhost_needs_a_key(served_model):
    proc = run_cli("serve", "--model", str(served_model), "--host", "0.0.0.0", timeout=60)
    assert proc.returncode == 2 and "--api-key" in proc.stderr


def test_retrieve_over_http_answers_from_the_index(drawing_chat, small_world, small_bound, tmp_path):
    from anybind.index import Index, build_index

    bound = anybind.load(small_bound)
    build_index(bound, small_world / "image", tmp_path / "index", progress=False)
    served = Server(drawing_chat, tmp_path / "srv", "--index", str(tmp_path / "index"), *SERVE_ARGS)
    try:
        body = json.dumps({"query": "a handwritten seven", "top_k": 3}).encode()
        request = urllib.request.Request(served.url + "/v1/retrieve", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        expected = Index.load(tmp_path / "index").search(bound.embed(["a handwritten seven"])[0].numpy(), 3)
        assert answer["query_modality"] == "text"
        assert [f["path"] for f in answer["data"]] == [path for _, _, path in expected]
    finally:
        served.stop()


# --- the page, in a real browser ---------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]  # no calls out of this machine


def chat_in_the_page(url: str, wav: Path, corrupt: Path, screenshot: Path) -> dict:
    """Drive the page as a person would; return what was seen."""
    sync_api = pytest.importorskip("playwright.sync_api")
    seen = {}
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 1000})
            page.goto(url)
            sync_api.expect(page.locator("#hint")).to_contain_text("audio (.wav")
            # count the answer's text growing, to see it stream rather than arrive whole
            page.evaluate("""() => { window.textUpdates = 0; new MutationObserver((ms) => {
                for (const m of ms) if (m.target.closest && m.target.closest('.assistant .text') ||
                    m.target.parentElement && m.target.parentElement.closest('.assistant .text')) window.textUpdates++;
              }).observe(document.getElementById('transcript'), {subtree: true, childList: true, characterData: true}); }""")
            page.set_input_files("#files", str(wav))
            sync_api.expect(page.locator("#pending .chip")).to_contain_text(wav.name)
            page.fill("#prompt", "Which digit is spoken here?")
            page.click("#send")
            first = page.locator(".message.assistant").nth(0)
            sync_api.expect(first.locator(".text")).not_to_be_empty(timeout=60_000)
            sync_api.expect(first).not_to_have_class(re.compile("streaming"), timeout=120_000)
            seen["first"] = first.locator(".text").first.inner_text()
            seen["updates"] = page.evaluate("window.textUpdates")

            page.fill("#prompt", "Now draw it.")
            page.keyboard.press("Enter")
            second = page.locator(".message.assistant").nth(1)
            sync_api.expect(second.locator("img.output")).to_be_visible(timeout=120_000)
            sync_api.expect(second).not_to_have_class(re.compile("streaming"), timeout=120_000)
            seen["image"] = second.locator("img.output").first.get_attribute("src")[:22]
            page.screenshot(path=str(screenshot), full_page=True)

            page.set_input_files("#files", str(corrupt))
            page.fill("#prompt", "And this one?")
            page.click("#send")
            sync_api.expect(page.locator(".message.error")).to_contain_text(corrupt.name, timeout=60_000)
            seen["error"] = page.locator(".message.error").inner_text()
            seen["kept"] = (page.input_value("#prompt"), page.locator("#pending .chip").count())
            page.locator("#pending .chip button").click()  # drop the bad file and go on
            page.click("#send")
            sync_api.expect(page.locator(".message.assistant")).to_have_count(3, timeout=60_000)
            sync_api.expect(page.locator(".message.assistant").nth(2)).not_to_have_class(re.compile("streaming"),
                                                                                      timeout=120_000)
            page.click("#new")
            seen["cleared"] = page.locator(".message").count()
        finally:
            browser.close()
    return seen


def test_the_page_in_chromium_streams_text_and_shows_the_drawing(server, every_world, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed: make test installs it with apt-get when run as root; "
                    "otherwise: sudo apt-get install chromium")
    corrupt = tmp_path / "broken.wav"
    corrupt.write_bytes(b"RIFF....WAVE but nothing else")
    seen = chat_in_the_page(server.url, sample(every_world, "audio"), corrupt, tmp_path / "page.png")
    assert seen["first"] and seen["updates"] > 2
    assert seen["image"] == "data:image/png;base64,"
    assert seen["error"].startswith("broken.wav: ") and seen["kept"] == ("And this one?", 1)
    assert seen["cleared"] == 0
    assert Image.open(tmp_path / "page.png").size[0] == 900
    if os.environ.get("ANYBIND_SCREENSHOT"):
        shutil.copy(tmp_path / "page.png", os.environ["ANYBIND_SCREENSHOT"])
