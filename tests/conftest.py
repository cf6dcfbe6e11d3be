import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from anybind import plugins

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture
def register_plugin():
    """Register plugin objects on the manager for one test, unregistering them after."""
    names = []

    def _register(plugin, name):
        plugins.register_plugin(plugin, name)
        names.append(name)
        return plugin

    yield _register
    for name in names:
        plugins.unregister_plugin(name)


def run_cli(*args, env=None, check=False, timeout=300, input=None):
    """Run the installed `anybind` console script as a user would (``input``: what they type)."""
    proc = subprocess.run(
        [str(BIN / "anybind"), *args],
        input=input,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"anybind {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def cli_in_process(*args, check=False):
    """Run an ``anybind`` command in this process, as ``run_cli`` does in a new one (exit code,
    stdout, stderr), without the seconds each new interpreter spends importing torch: for the
    further error cases of a command a test already runs once through ``run_cli``. An exception
    the command does not turn into a one-line error is raised, as a traceback would show."""
    from click.testing import CliRunner

    from anybind.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], prog_name="anybind")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    if check and result.exit_code != 0:
        raise AssertionError(f"anybind {' '.join(map(str, args))} failed ({result.exit_code}):\n{result.output}")
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_tiny_causal_lm(path: Path, max_positions: int = 256) -> Path:
    """A tiny random Llama with its own byte-level BPE tokenizer (trained here) and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from anybind.data.world import CAPTION_TEMPLATES, DIGIT_WORDS

    corpus = [t.format(word=w, digit=i) for i, w in enumerate(DIGIT_WORDS) for t in CAPTION_TEMPLATES]
    corpus += ["Which digit is this? It is the digit seven.", "What is spoken here? Describe this attachment.",
               "You are a helpful assistant. [image: ] [audio: ] héllo wörld"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<pad>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", pad_token="<pad>",
                                        bos_token="<|im_start|>", eos_token="<|im_end|>")
    tokenizer.chat_template = CHATML
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
                         initializer_range=0.3)  # large enough for soft tokens to move its logits
    import torch

    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm") / "model")


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """200 digits as images and spoken words (shared by the chat and image-output tests)."""
    root = tmp_path_factory.mktemp("small-world")
    run_cli("world", "build", str(root), "--modality", "image", "--modality", "audio", "--limit", "200", "--small", check=True)
    return root


@pytest.fixture(scope="session")
def every_world(tmp_path_factory):
    """A few digits of every installed modality that writes sample-world data (parsed manifest)."""
    from anybind.data import read_manifest

    root = tmp_path_factory.mktemp("every-modality")
    run_cli("world", "build", str(root), "--limit", "20", "--small", check=True, timeout=600)
    return read_manifest(root)


@pytest.fixture(scope="session")
def small_bound(small_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("small-bind") / "bind"
    run_cli("train", "bind", "--manifest", str(small_world), "--out", str(out), "--steps", "30", "--batch-size", "32", check=True)
    return out


def build_tiny_sd(path: Path, cross_attention_dim: int = 32, max_tokens: int = 12) -> Path:
    """A tiny random Stable Diffusion pipeline with its own CLIP text encoder and a byte-level
    CLIP tokenizer written here (16x16 images), saved as a standard diffusers directory."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    path.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_tokens)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=cross_attention_dim, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=max_tokens, bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=4, norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8, sample_size=16)
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                                set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(path)
    return path


TINY_DECODER = ["--set", "size=16", "--set", "vae_channels=8,16", "--set", "unet_channels=16,32", "--set", "head_dim=4",
                "--set", "vae_steps=3", "--steps", "4", "--batch-size", "8"]
TINY_AUDIOGEN = ["--set", "n_mels=16", "--set", "frames=16", "--set", "vae_channels=8,16", "--set", "unet_channels=16,32",
                 "--set", "head_dim=4", "--set", "vae_steps=3", "--steps", "4", "--batch-size", "8"]
#: Plugins to load where a test runs the quickstart over stages already trained for images only.
IMAGES_OUT_ONLY = {"ANYBIND_LOAD_PLUGINS": "anybind-image,anybind-audio,anybind-diffusion"}


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "sd")


@pytest.fixture(scope="session")
def decoder_dir(small_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("decoder") / "decoder"
    run_cli("train", "decoder", "--manifest", str(small_world), "--out", str(out), *TINY_DECODER, check=True)
    return out


@pytest.fixture(scope="session")
def drawing_chat(small_world, small_bound, tiny_lm, decoder_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("drawing-chat") / "chat"
    run_cli("train", "align-in", "--manifest", str(small_world), "--bound", str(small_bound), "--out", str(out),
            "--backbone", f"hf:{tiny_lm}", "--steps", "5", "--batch-size", "4", check=True)
    run_cli("train", "align-out", "--manifest", str(small_world), "--model", str(out), "--decoder", str(decoder_dir),
            "--steps", "40", "--batch-size", "8", "--lr", "0.01", check=True)
    return out


def always_draws(chat_dir: Path, target: Path, bound: Path | None = None) -> Path:
    """A copy of a drawing chat model whose [IMG0] always wins (to test the mechanics);
    ``bound`` points it at another bound model."""
    shutil.copytree(chat_dir, target)
    config = json.loads((chat_dir / "config.json").read_text())
    config["bound"] = os.path.relpath((bound or (chat_dir / config["bound"])).resolve(), target.resolve())
    (target / "config.json").write_text(json.dumps(config))
    from anybind.models.output import GenerativeOutput

    gen = GenerativeOutput.from_pretrained(target / "image_output")
    gen.config.decoder = os.path.relpath((chat_dir / gen.config.decoder).resolve(), target.resolve())
    gen.set_logit_offset(1e4)
    gen.save_pretrained(target / "image_output")
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``anybind serve`` in its own process on a free localhost port, as a user starts it;
    its log is kept, and its temporary files go to ``tmp`` (to check that none are left)."""

    def __init__(self, model: Path, folder: Path, *args: str):
        folder.mkdir(parents=True, exist_ok=True)
        self.tmp = folder / "tmp"
        self.tmp.mkdir(exist_ok=True)
        self.log = folder / "serve.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.began = time.time()
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([str(BIN / "anybind"), "serve", "--model", str(model), "--port", str(self.port),
                                          *args], stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, "TMPDIR": str(self.tmp)})
        self.ready_seconds = self._wait()

    def _wait(self, timeout: float = 180) -> float:
        while time.time() - self.began < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"anybind serve exited ({self.proc.returncode}):\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/", timeout=2):
                    return time.time() - self.began
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise AssertionError(f"anybind serve did not answer in {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
