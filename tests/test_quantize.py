"""int8 decoding gives back the memory of the fp32 weights it replaced."""

import copy
from pathlib import Path

import pytest
import torch

from anybind.models.backbone import Backbone, load_hf_causal_lm
from anybind.data.prompts import CHAT
from anybind.models.quantize import Int8Embedding, Int8Layer, _calibration_ids, quantize_backbone


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


def _calibration_peaks(model, tokenizer) -> dict[str, torch.Tensor]:
    """Each linear layer's input peaks over the calibration text, read from the fp32 model as is."""
    peaks, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            hooks.append(module.register_forward_hook(
                lambda m, i, o, name=name: peaks.__setitem__(name, i[0].reshape(-1, m.in_features).abs().amax(0))))
    with torch.no_grad():
        model(input_ids=_calibration_ids(tokenizer, CHAT))
    for hook in hooks:
        hook.remove()
    return peaks


@pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="reads Linux's /proc/self/smaps")
@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor, torch.quantize_per_channel:UserWarning")
@pytest.mark.parametrize("decoding", [False, True], ids=["transformers", "anybind-llama"])
def test_int8_gives_back_the_pages_of_the_weights_it_replaced(wide_lm, decoding):
    model, tokenizer = load_hf_causal_lm(str(wide_lm), decoding=decoding)
    with torch.no_grad():  # a change to the embedding: tied to the head, it is read again after the head is quantized
        model.get_input_embeddings().weight[:, 0] += 1.0
        model.model.layers[0].mlp.up_proj.weight[7] *= 300  # an outlier channel of the MLP's output projection
    reference = copy.deepcopy(model)  # quantized all at once, from a whole fp32 pass's peaks
    peaks = _calibration_peaks(reference, tokenizer)
    for name, peak in peaks.items():
        parent, _, child = name.rpartition(".")
        setattr(reference.get_submodule(parent), child, Int8Layer.from_float(reference.get_submodule(name), peak))
    reference.set_input_embeddings(Int8Embedding.from_float(reference.get_input_embeddings()))
    assert 7 in reference.model.layers[0].mlp.down_proj.outliers.tolist()
    for p in model.parameters():  # every page of the checkpoint resident, as quantizing reads them all
        float(p.detach().sum())
    checkpoint = wide_lm / "model.safetensors"
    before = _resident_kib(checkpoint)
    backbone = Backbone(f"hf:{wide_lm}", model, tokenizer)
    quantize_backbone(backbone, calibration=CHAT)

    kept = sum(p.numel() * p.element_size() for p in backbone.model.parameters()) // 1024
    # what stays resident besides the fp32 weights kept: the part-pages at the two ends of each weight
    edges = 8 * (len(peaks) + len(list(backbone.model.parameters())))
    assert before >= checkpoint.stat().st_size // 1024 - 8
    assert _resident_kib(checkpoint) <= kept + edges
    assert before - _resident_kib(checkpoint) >= 0.9 * (checkpoint.stat().st_size // 1024 - kept)
    ids = torch.tensor([[2, 50, 120, 7, 300, 11]])
    with torch.inference_mode():
        assert torch.equal(backbone.model(input_ids=ids).logits, reference(input_ids=ids).logits)
    ours, theirs = backbone.model.get_input_embeddings(), reference.get_input_embeddings()
    assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.scale, theirs.scale)


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
        assert error(Int8Layer(layer)(x)) < 0.05
        assert torch.equal(Int8Layer(layer)(x[1:2]), layer(x[1:2]))  # one token (decoding): the layer as it is


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor, torch.quantize_per_channel:UserWarning")
def test_an_outlier_input_channel_is_multiplied_in_fp32():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    x = torch.randn(6, 64)
    x[:, 5] *= 500  # one channel loud in every token: a token's own scale cannot help the rest of its row
    with torch.no_grad():
        linear.weight[:, 5] /= 500  # ...and, as in the LM, weighted so that it adds no more than another
    exact = linear(x).detach()
    plain, split = Int8Layer.from_float(linear), Int8Layer.from_float(linear, x.abs().amax(0))

    def error(layer):
        with torch.inference_mode():
            return ((layer(x) - exact).norm(dim=-1) / exact.norm(dim=-1)).max().item()

    assert plain.outliers is None and split.outliers.tolist() == [5] and len(split.kept) == 63
    assert error(plain) > 0.1 and error(split) < 0.02
    assert Int8Layer.from_float(linear, torch.ones(64)).outliers is None  # even peaks: every channel int8


@pytest.mark.parametrize("decoding", [False, True], ids=["transformers+peft", "anybind-llama+lora"])
def test_an_unmerged_adapter_is_merged_layer_by_layer_as_it_is_quantized(wide_lm, tmp_path, decoding):
    from peft import LoraConfig, get_peft_model

    from anybind.models.backbone import apply_adapter, quiet_peft

    model, _ = load_hf_causal_lm(str(wide_lm))
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    with quiet_peft():
        get_peft_model(model, config).save_pretrained(tmp_path / "adapter")  # random A and B: a real change

    logits = []
    for merge in (True, False):
        backbone = Backbone(f"hf:{wide_lm}", *load_hf_causal_lm(str(wide_lm), decoding=decoding))
        apply_adapter(backbone, tmp_path / "adapter", merge=merge)
        quantize_backbone(backbone, calibration=CHAT)
        assert type(backbone.model).__name__ == "LlamaForCausalLM"
        assert not any("lora" in name for name, _ in backbone.model.named_modules())
        assert all(isinstance(backbone.model.get_submodule(f"model.layers.0.{n}"), Int8Layer)
                   for n in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj", "mlp.up_proj"))
        with torch.inference_mode():
            logits.append(backbone.model(input_ids=torch.tensor([[2, 50, 120, 7, 300, 11]])).logits)
    plain = Backbone(f"hf:{wide_lm}", *load_hf_causal_lm(str(wide_lm), decoding=decoding))
    quantize_backbone(plain, calibration=CHAT)
    with torch.inference_mode():
        unadapted = plain.model(input_ids=torch.tensor([[2, 50, 120, 7, 300, 11]])).logits
    assert torch.allclose(logits[0], logits[1], atol=1e-4)  # merged first, or as each layer is quantized: the same
    assert not torch.allclose(logits[0], unadapted, atol=1e-2)  # ...and the adapter is in both
