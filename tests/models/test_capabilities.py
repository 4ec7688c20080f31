"""What an extractor can do is declared by the extractor (issue 38): a text-only extractor registered with
the default config values says "no CAM, no MI" in its config, card and predictor; folders and run configs
written before the declaration still load; ``X.from_pretrained`` refuses another extractor's folder; a new
extractor and a new preset are covered by the generic tests without editing them."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.models.bert_cls import NAME, PATH, BertCLS
from tests.models.conftest import LABELS, make_examples

import camim
from camim.errors import CamimError
from camim.inference import Predictor
from camim.models import build_model, load_model, registry
from camim.models.base import MREModel
from camim.models.bert_re import BertRE
from camim.models.card import read_front_matter
from camim.models.config import ModelConfig
from camim.training.config import PRESET_DIR, load_config, load_run_config


@pytest.fixture
def bert_cls(monkeypatch):
    monkeypatch.setitem(registry.EXTRACTORS, NAME, PATH)
    return NAME


def test_a_text_only_extractor_with_the_default_values_says_no_cam_no_mi(bert_cls, text_dir, tmp_path):
    cfg = ModelConfig(name=bert_cls, text_encoder=str(text_dir), max_length=32, text_window=12)
    assert (cfg.cam, cfg.mi, cfg.uses_cam, cfg.uses_mi) == ("none", False, False, False)
    for key, value in (("cam", "both"), ("cam", "word"), ("mi", True)):
        with pytest.raises(CamimError, match=rf"^model\.{key}: bert-cls has no .*\(it reads text only\)"):
            ModelConfig(name=bert_cls, **{key: value})

    torch.manual_seed(0)
    model = build_model(cfg, LABELS).eval()
    assert type(model) is BertCLS and model.required_modalities == set()
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text(encoding="utf-8"))
    assert (saved["cam"], saved["mi"]) == ("none", False)
    card = (tmp_path / "m" / "README.md").read_text(encoding="utf-8")
    assert read_front_matter(card)["tags"] == [
        "camim",
        "relation-extraction",
        "multimodal-relation-extraction",
        "mnre",
        "bert-cls",
    ]
    assert "It is BERT with the [CLS] vector as the relation representation (text only), built" in card
    assert "Caption-Aware Module" not in card and "mutual-information loss" not in card
    assert "nothing else: the model reads text only" in card

    predictor = Predictor.from_pretrained(tmp_path / "m")
    info = predictor.info()
    assert (info["model"], info["cam"], info["mi"], info["required_modalities"]) == (
        "BertCLS",
        "none",
        False,
        [],
    )
    p = predictor.predict("the man plays for new york team", head="man", tail="new york", caption="a dog")
    assert p.notes == ["caption given, but this model does not read captions"] and p.absent_modalities == []


def test_a_text_only_folder_saved_with_cam_and_mi_on_loads_with_them_off(text_dir, tmp_path, caplog):
    """What ``save_pretrained`` wrote for a ``bert`` built without cam/mi before the declaration (the
    ModelConfig defaults cam: both, mi: true): it loads, logged, with the same weights and logits."""
    torch.manual_seed(0)
    model = build_model(
        {"name": "bert", "text_encoder": str(text_dir), "max_length": 32, "text_window": 12}, LABELS
    ).eval()
    model.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    old = {**json.loads(path.read_text(encoding="utf-8")), "cam": "both", "mi": True}
    path.write_text(json.dumps(old), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="camim.models.config"):
        again = load_model(tmp_path / "m")
    assert (again.config.cam, again.config.mi) == ("none", False)
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: model.{key} {old!r} read as {new!r}: bert does not support it (a config written before "
        "extractors declared their capabilities)"
        for key, old, new in (("cam", "both", "none"), ("mi", True, False))
    ]
    assert again.state_dict().keys() == model.state_dict().keys()
    batch = model.processor(make_examples(2, images=False))
    torch.testing.assert_close(again(batch).logits, model(batch).logits, rtol=0, atol=0)
    with pytest.raises(CamimError, match=r"^model\.cam: bert has no Caption-Aware Module"):
        build_model(old, LABELS)  # a config given now is refused

    run = load_config("bert")  # a run folder's config.yaml of the same age
    raw = {**run.to_dict(), "model": {**run.model.to_dict(), "cam": "word", "mi": True}}
    (tmp_path / "config.yaml").write_text(json.dumps(raw), encoding="utf-8")
    assert load_run_config(tmp_path / "config.yaml") == run


def test_from_pretrained_refuses_a_subclass_registered_under_another_name(bert_cls, text_dir, tmp_path):
    model = build_model(
        {"name": bert_cls, "text_encoder": str(text_dir), "max_length": 32, "text_window": 12}, LABELS
    )
    model.save_pretrained(tmp_path / "m")
    assert issubclass(BertCLS, BertRE)
    with pytest.raises(CamimError, match=r"config\.json: holds a BertCLS model, not a BertRE$"):
        BertRE.from_pretrained(tmp_path / "m")
    for loader in (BertCLS.from_pretrained, MREModel.from_pretrained, load_model):
        assert type(loader(tmp_path / "m")) is BertCLS


def test_a_new_extractor_and_preset_are_covered_by_the_generic_tests(tmp_path):
    """A child pytest with ``bert-cls`` registered and a ``bert-cls`` preset beside the packaged ones (as a
    contributor adds them) collects and passes the generic tests for both, none of which names them."""
    presets = tmp_path / "presets"
    shutil.copytree(PRESET_DIR, presets)
    (presets / "bert-cls.yaml").write_text(
        "base: offline-bert\nname: bert-cls\ndescription: offline text-only BERT, [CLS] pooling\n"
        "model:\n  name: bert-cls\n",
        encoding="utf-8",
    )
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(camim.__file__).parents[1]), str(root)]),
        "CAMIM_TEST_EXTRACTOR": f"{NAME}={PATH}",
        "CAMIM_TEST_PRESET_DIR": str(presets),
    }
    generic = [
        "tests/models/test_extractors.py",
        "tests/training/test_config.py::test_every_preset_builds_with_tiny_overrides",
        "tests/training/test_config.py::test_every_preset_round_trips_through_its_resolved_yaml",
    ]
    cmd = [sys.executable, "-m", "pytest", "-p", "tests.extra_entries", "-q", "-rA", "-p", "no:cacheprovider"]
    proc = subprocess.run(
        [*cmd, *generic, "-k", "bert-cls"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    passed = set(re.findall(r"^PASSED (\S+)", proc.stdout, re.M))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert passed == {
        "tests/models/test_extractors.py::test_the_config_grants_exactly_what_the_extractor_declares[bert-cls]",
        "tests/models/test_extractors.py::test_a_built_model_reads_and_computes_what_its_extractor_declares[bert-cls]",
        "tests/models/test_extractors.py::test_an_extractor_saves_loads_and_describes_itself[bert-cls]",
        "tests/training/test_config.py::test_every_preset_builds_with_tiny_overrides[bert-cls]",
        "tests/training/test_config.py::test_every_preset_round_trips_through_its_resolved_yaml[bert-cls]",
    }
