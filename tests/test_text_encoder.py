"""The text tower's BERT in plain torch equals transformers' BertModel, and reads text as its tokenizer does."""

import pytest
import torch

from anybind.errors import CheckpointError
from anybind.plugins.builtins import bert
from anybind.plugins.builtins.text_encoder import TextEncoder, TextEncoderConfig, packaged_minilm_dir

SENTENCES = ["a handwritten seven", "The spoken word ZERO, twice!", "naïve café: 3.14 and 2,718 apples " * 6, "x"]


def test_minilm_without_transformers_equals_bert_model():
    from transformers import AutoModel, AutoTokenizer

    source = packaged_minilm_dir()
    assert bert.readable(source)
    reference, reference_tokenizer = AutoModel.from_pretrained(source).eval(), AutoTokenizer.from_pretrained(source)
    ours, tokenizer = bert.BertEncoder.from_pretrained(source).eval(), bert.TokenizerFile(source)
    for max_length in (8, 64):
        for text in SENTENCES:
            assert tokenizer(text, truncation=True, max_length=max_length)["input_ids"] == \
                reference_tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
    assert tokenizer.pad_token_id == reference_tokenizer.pad_token_id
    batch = reference_tokenizer(SENTENCES, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        expected = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        got = ours(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    real = batch["attention_mask"].bool()
    assert torch.allclose(got.last_hidden_state[real], expected.last_hidden_state[real], atol=1e-5)
    assert torch.allclose(got.pooler_output, expected.pooler_output, atol=1e-5)


def test_the_text_tower_reads_the_packaged_minilm_without_transformers():
    encoder = TextEncoder(TextEncoderConfig())
    assert isinstance(encoder.model, bert.BertEncoder) and encoder.config.width == 384
    out = encoder(**encoder.collate([encoder.preprocess(s) for s in SENTENCES[:2]]))
    assert out.tokens.shape[:2] == out.mask.shape and out.tokens.shape[-1] == 384


def test_a_bert_checkpoint_with_a_head_loads_and_a_wrong_one_fails(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    torch.manual_seed(0)
    model = BertForMaskedLM(config).eval()
    model.save_pretrained(tmp_path / "mlm")  # "bert."-prefixed, with a "cls." head
    ids = torch.randint(1, 99, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    ours = bert.BertEncoder.from_pretrained(tmp_path / "mlm").eval()
    with torch.no_grad():
        expected = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(ids, mask).last_hidden_state
    assert torch.allclose(got[mask.bool()], expected[mask.bool()], atol=1e-5)
    config.hidden_size, config.intermediate_size = 48, 40  # weights of another shape than its config says
    (tmp_path / "mlm" / "config.json").write_text(config.to_json_string())
    with pytest.raises(CheckpointError, match="does not match its config.json"):
        bert.BertEncoder.from_pretrained(tmp_path / "mlm")
