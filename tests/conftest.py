import os
import subprocess
import sys
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


CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_tiny_causal_lm(path: Path, max_positions: int = 256) -> Path:
    """A tiny random Llama with its own byte-level BPE tokenizer (trained here) and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from anybind.world import CAPTION_TEMPLATES, DIGIT_WORDS

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
