"""int8 decoding gives back the memory of the fp32 weights it replaced."""

import copy
from pathlib import Path

import pytest
import torch

from anybind.models.backbone import Backbone, load_hf_causal_lm
from anybind.models.quantize import KEEP_FP32, Int8Embedding, RowScaled, quantize_backbone


def _resident_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path``."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:  # a mapping's header line
            inside = len(fields) == 6 and fields[5] == str(path)
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


@pytest.fixture
def wide_lm(tiny_lm, tmp_path):
    """The tiny LM's tokenizer on a Llama wide enough that each weight spans many pages."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_pretrained(tiny_lm)
    config.hidden_size, config.intermediate_size = 256, 512
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "lm")
    AutoTokenizer.from_pretrained(tiny_lm).save_pretrained(tmp_path / "lm")
    return tmp_path / "lm"


@pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="reads Linux's /proc/self/smaps")
@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning")  # the reference is torch's own
@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor, torch.quantize_per_channel:UserWarning")
def test_int8_gives_back_the_pages_of_the_weights_it_replaced(wide_lm):
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    model, tokenizer = load_hf_causal_lm(str(wide_lm))
    with torch.no_grad():  # a change to the embedding: tied to the head, it is read again after the head is quantized
        model.get_input_embeddings().weight[:, 0] += 1.0
    reference = copy.deepcopy(model)  # quantized in one call, as torch does it
    layers = {n for n, m in reference.named_modules() if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] not in KEEP_FP32}
    reference = quantize_dynamic(reference, {n: per_channel_dynamic_qconfig for n in layers}, dtype=torch.qint8)
    reference.set_input_embeddings(Int8Embedding.from_float(reference.get_input_embeddings()))
    for name in layers:
        parent, _, child = name.rpartition(".")
        setattr(reference.get_submodule(parent), child, RowScaled(reference.get_submodule(name)))
    for p in model.parameters():  # every page of the checkpoint resident, as quantizing reads them all
        float(p.detach().sum())
    checkpoint = wide_lm / "model.safetensors"
    before = _resident_kib(checkpoint)
    backbone = Backbone(f"hf:{wide_lm}", model, tokenizer)
    quantize_backbone(backbone)

    kept = sum(p.numel() * p.element_size() for p in backbone.model.parameters()) // 1024
    # what stays resident besides the fp32 weights kept: the part-pages at the two ends of each weight
    edges = 8 * (len(layers) + len(list(backbone.model.parameters())))
    assert before >= checkpoint.stat().st_size // 1024 - 8
    assert _resident_kib(checkpoint) <= kept + edges
    assert before - _resident_kib(checkpoint) >= 0.9 * (checkpoint.stat().st_size // 1024 - kept)
    ids = torch.tensor([[2, 50, 120, 7, 300, 11]])
    with torch.inference_mode():
        assert torch.equal(backbone.model(input_ids=ids).logits, reference(input_ids=ids).logits)
    ours, theirs = backbone.model.get_input_embeddings(), reference.get_input_embeddings()
    assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.scale, theirs.scale)


@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor, torch.quantize_per_channel:UserWarning")
def test_each_token_is_quantized_on_its_own_scale_not_the_loudest_ones():
    from torch.ao.nn.quantized.dynamic import Linear as Int8Linear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    linear.qconfig = per_channel_dynamic_qconfig
    layer = Int8Linear.from_float(linear)
    x = torch.randn(5, 64)
    x[0] *= 1000  # one token with the attention sink's activations, as in a prompt

    def error(y):  # of each ordinary token, relative to its fp32 output
        exact = linear(x).detach()
        return ((y - exact).norm(dim=-1) / exact.norm(dim=-1))[1:].max().item()

    with torch.inference_mode():
        assert error(layer(x)) > 0.3  # one scale for the prompt: the loud token sets it, the rest are crushed
        assert error(RowScaled(layer)(x)) < 0.05
        assert torch.equal(RowScaled(layer)(x[1:2]), layer(x[1:2]))  # one token (decoding): the layer as it is
