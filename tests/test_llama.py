"""Chat's plain-torch Llama answers as transformers' does, with adapters, without its imports."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from anybind.errors import CheckpointError
from anybind.models import llama, lora
from anybind.models.backbone import Backbone, apply_adapter, load_hf_causal_lm


def _padded_batch(vocab: int):
    torch.manual_seed(1)
    ids = torch.randint(4, vocab, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, :3] = 0  # left-padded rows, as chat batches them
    mask[2, :6] = 0
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def test_logits_and_cache_equal_transformers(tiny_lm):
    theirs, _ = load_hf_causal_lm(str(tiny_lm))
    ours, _ = load_hf_causal_lm(str(tiny_lm), decoding=True)
    assert isinstance(ours, llama.LlamaForCausalLM) and type(theirs).__module__.startswith("transformers")
    ids, mask, positions = _padded_batch(theirs.config.vocab_size)
    with torch.no_grad():
        a = theirs(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        b = ours(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        real = mask.bool()
        assert torch.allclose(a.logits[real], b.logits[real], atol=1e-5)
        assert not b.logits.isnan().any()  # a pad that may see no key gives no NaN to the rows
        for _ in range(3):  # decoding against each one's cache
            token = a.logits[:, -1].argmax(-1, keepdim=True)
            mask = torch.cat([mask, mask.new_ones(3, 1)], dim=1)
            positions = positions[:, -1:] + 1
            a = theirs(input_ids=token, attention_mask=mask, position_ids=positions, past_key_values=a.past_key_values)
            b = ours(input_ids=token, attention_mask=mask, position_ids=positions, past_key_values=b.past_key_values)
            assert torch.allclose(a.logits, b.logits, atol=1e-5)
        embeds = theirs.get_input_embeddings()(ids[:1])  # soft tokens come in as embeddings, unmasked
        assert torch.allclose(theirs(inputs_embeds=embeds, logits_to_keep=1).logits,
                              ours(inputs_embeds=embeds, logits_to_keep=1).logits, atol=1e-5)
        assert torch.allclose(theirs.model(inputs_embeds=embeds).last_hidden_state,
                              ours.base_model(inputs_embeds=embeds).last_hidden_state, atol=1e-5)
    assert ours.lm_head.weight is ours.model.embed_tokens.weight  # tied, as saved


@pytest.mark.parametrize("merge", [True, False])
def test_a_saved_lora_adapter_changes_it_as_peft_does(tiny_lm, tmp_path, merge):
    from peft import LoraConfig, get_peft_model

    from anybind.models.backbone import quiet_peft

    model, tokenizer = load_hf_causal_lm(str(tiny_lm))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    with quiet_peft():
        get_peft_model(model, config).save_pretrained(tmp_path / "adapter")  # random A and B: a real change
    assert lora.plain(tmp_path / "adapter")
    theirs = Backbone("t", *load_hf_causal_lm(str(tiny_lm)))
    ours = Backbone("o", *load_hf_causal_lm(str(tiny_lm), decoding=True))
    for backbone in (theirs, ours):
        apply_adapter(backbone, tmp_path / "adapter", merge=merge if backbone is ours else True)
    wrapped = [n for n, m in ours.model.named_modules() if isinstance(m, lora.LoRALinear)]
    assert len(wrapped) == (0 if merge else 6)  # 2 layers x 3 targets
    ids = torch.tensor([[2, 50, 120, 7, 300, 11]])
    with torch.no_grad():
        adapted, plain = ours.model(input_ids=ids).logits, load_hf_causal_lm(str(tiny_lm), decoding=True)[0](input_ids=ids).logits
        assert torch.allclose(theirs.model(input_ids=ids).logits, adapted, atol=1e-5)
        assert not torch.allclose(adapted, plain, atol=1e-3)


def test_only_a_plain_lora_adapter_is_applied_here(tmp_path, tiny_lm):
    (tmp_path / "a").mkdir()
    assert not lora.plain(tmp_path / "a")  # no files
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": True}
    (tmp_path / "a" / lora.CONFIG_NAME).write_text(json.dumps(config))
    (tmp_path / "a" / lora.WEIGHTS_NAME).write_bytes(b"")
    assert not lora.plain(tmp_path / "a")  # DoRA: peft applies it to transformers' model
    backbone = Backbone("o", *load_hf_causal_lm(str(tiny_lm), decoding=True))
    with pytest.raises(CheckpointError, match="not a plain LoRA adapter"):
        apply_adapter(backbone, tmp_path / "a")
    config["use_dora"] = False
    (tmp_path / "a" / lora.CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"adapter_model.safetensors: cannot read the adapter"):
        apply_adapter(backbone, tmp_path / "a")


def test_what_it_does_not_read_loads_with_transformers(tiny_lm, tmp_path):
    scaled = tmp_path / "scaled"
    shutil.copytree(tiny_lm, scaled)
    config = json.loads((scaled / "config.json").read_text())
    config["rope_scaling"] = {"rope_type": "linear", "factor": 2.0}
    (scaled / "config.json").write_text(json.dumps(config))
    assert llama.readable(tiny_lm) and not llama.readable(scaled)
    model, _ = load_hf_causal_lm(str(scaled), decoding=True)
    assert not isinstance(model, llama.LlamaForCausalLM)


def test_damaged_weights_name_the_file(tiny_lm, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_lm, damaged)
    (damaged / "model.safetensors").write_bytes((tiny_lm / "model.safetensors").read_bytes()[:500])
    with pytest.raises(CheckpointError, match=r"damaged/model.safetensors: cannot read the LM's weights"):
        load_hf_causal_lm(str(damaged), decoding=True)


def test_decoding_imports_none_of_transformers_model_classes(tiny_lm):
    code = (f"import sys, torch; from anybind.models.backbone import load_backbone\n"
            f"b = load_backbone('hf:{tiny_lm}', decoding=True)\n"
            "b.model(input_ids=torch.tensor([[5, 6, 7]]))\n"
            "print(sorted(m for m in ('transformers.modeling_utils', 'torch._dynamo', 'torchvision', 'peft')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_its_end_of_turn_comes_from_the_config_without_a_generation_config(tiny_lm, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(tiny_lm, bare)
    (bare / "generation_config.json").unlink(missing_ok=True)
    ours = Backbone("o", *load_hf_causal_lm(str(bare), decoding=True))
    theirs = Backbone("t", *load_hf_causal_lm(str(tiny_lm)))
    assert ours.stop_ids == theirs.stop_ids and ours.stop_ids
    config = json.loads((bare / "config.json").read_text())
    del config["hidden_size"]
    (bare / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"bare/config.json: not a complete Llama config"):
        load_hf_causal_lm(str(bare), decoding=True)
