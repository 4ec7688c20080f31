from __future__ import annotations

import json

import pytest
import torch
from tests.models.conftest import LABELS, make_examples, tiny_config

from camim.errors import CamimError
from camim.models import build_model, load_model


def test_bert_shapes_loss_and_save_load(text_dir, vision_dir, tmp_path):
    model = build_model(tiny_config(text_dir, vision_dir, name="bert"), LABELS).eval()
    assert model.required_modalities == set()
    batch = model.processor(make_examples(3))
    out = model(batch)
    assert out.logits.shape == (3, len(LABELS)) and out.logits.dtype == torch.float32
    assert out.loss is not None and out.mi_loss is None and torch.equal(out.loss, out.ce_loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["labels"] == LABELS and saved["name"] == "bert"
    assert not list((tmp_path / "m").glob("*.bin")) and not list((tmp_path / "m").glob("*.pt"))
    loaded = load_model(tmp_path / "m")
    batch2 = loaded.processor(make_examples(3))
    assert torch.equal(batch.input_ids, batch2.input_ids)
    torch.testing.assert_close(loaded(batch2).logits, out.logits, rtol=0, atol=0)


def test_build_model_rejects_bad_config(text_dir):
    with pytest.raises(CamimError, match="model name"):
        build_model({"name": "gpt", "text_encoder": str(text_dir)}, LABELS)
    with pytest.raises(CamimError, match="unknown model config keys"):
        build_model({"name": "bert", "text_encoder": str(text_dir), "colour": 1}, LABELS)
    with pytest.raises(CamimError, match="cannot load the tokenizer"):
        build_model({"name": "bert", "text_encoder": str(text_dir / "nope")}, LABELS)


def test_load_model_errors(tmp_path):
    with pytest.raises(CamimError, match="not a camim model folder"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{bad")
    with pytest.raises(CamimError, match="config.json:1"):
        load_model(tmp_path)


def test_from_pretrained_pairs_save_pretrained(text_dir, vision_dir, tmp_path):
    from camim.models import TMR, BertRE
    from camim.models.base import MREModel

    model = build_model(tiny_config(text_dir, vision_dir, name="bert"), LABELS).eval()
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir() if p.name.startswith(".")) == []  # no temp files
    batch = model.processor(make_examples(2))
    for loaded in (BertRE.from_pretrained(tmp_path / "m"), MREModel.from_pretrained(tmp_path / "m")):
        assert type(loaded) is BertRE and not loaded.training and loaded.labels == LABELS
        torch.testing.assert_close(loaded(batch).logits, model(batch).logits, rtol=0, atol=0)
    with pytest.raises(CamimError, match="holds a BertRE model, not a TMR"):
        TMR.from_pretrained(tmp_path / "m")


def test_the_load_report_is_shown_only_for_weights_not_left_out_on_purpose(tmp_path):
    """A `camim pretrain` folder keeps its masked-LM head, which every fine-tuning run leaves out: transformers'
    LOAD REPORT of those UNEXPECTED keys is expected and dropped; a missing weight still shows the report."""
    import logging

    from safetensors.torch import load_file, save_file
    from transformers import BertConfig, BertForMaskedLM

    from camim.models.encoders import load_text_encoder

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    collect = Collect()
    library = logging.getLogger("transformers")  # its own handlers get every record of the library
    library.addHandler(collect)
    try:
        cfg = BertConfig(
            vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
        mlm = tmp_path / "mlm"
        BertForMaskedLM(cfg).save_pretrained(mlm)
        load_text_encoder(str(mlm))
        assert not [m for m in collect.messages if "LOAD REPORT" in m]
        weights = load_file(mlm / "model.safetensors")
        del weights["bert.encoder.layer.0.output.dense.weight"]
        save_file(weights, mlm / "model.safetensors", metadata={"format": "pt"})
        load_text_encoder(str(mlm))
        reports = [m for m in collect.messages if "LOAD REPORT" in m]
        assert (
            len(reports) == 1
            and "encoder.layer.0.output.dense.weight" in reports[0]
            and "MISSING" in reports[0]
        )
    finally:
        library.removeHandler(collect)
