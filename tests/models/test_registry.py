"""One model registry: every place that names the extractors reads camim.models.registry.EXTRACTORS, so an
extractor added there (one line plus its module) is built, saved, loaded and named in the errors."""

from __future__ import annotations

import re

import pytest
from tests.models.conftest import LABELS, make_examples, tiny_config

import camim.models.registry as registry
from camim.errors import CamimError
from camim.models import TMR, build_model, load_model
from camim.models.bert_re import BertRE
from camim.models.config import ModelConfig
from camim.training.config import config_from_dict


class ShortBert(BertRE):
    """A fourth extractor for the test: the text-only model under another name."""

    model_name = "short-bert"


def test_the_names_come_from_the_registry(monkeypatch):
    assert {"bert", "tmr", "hvpnet"} <= set(registry.model_names())  # the paper's three, at least
    assert registry.model_class("tmr") is TMR
    monkeypatch.setitem(registry.EXTRACTORS, "short-bert", f"{__name__}.ShortBert")  # the texts follow it
    names = registry.model_names()
    assert names == tuple(registry.EXTRACTORS) and names[-1] == "short-bert"
    listed = ", ".join(names[:-1]) + " or short-bert"
    assert registry.names_text() == listed
    with pytest.raises(CamimError, match=re.escape(f"unknown model name 'lstm'; expected {listed}")):
        registry.model_class("lstm")
    with pytest.raises(CamimError, match=re.escape(f"model.name: model name must be one of {names}")):
        ModelConfig(name="lstm")
    with pytest.raises(CamimError, match=re.escape(f"'name' ({' | '.join(names)})")):
        config_from_dict({"model": {}})


def test_an_extractor_added_to_the_registry_builds_saves_and_loads(
    monkeypatch, text_dir, vision_dir, tmp_path
):
    monkeypatch.setitem(registry.EXTRACTORS, "short-bert", f"{__name__}.ShortBert")
    cfg = {**tiny_config(text_dir, vision_dir), "name": "short-bert", "cam": "none", "mi": False}
    model = build_model(cfg, labels=LABELS)
    assert type(model) is ShortBert and "short-bert" in registry.names_text()
    model.save_pretrained(tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert type(again) is ShortBert
    batch = model.processor(make_examples()[:2])
    model.eval()
    again.eval()
    assert (model(batch).logits == again(batch).logits).all()
