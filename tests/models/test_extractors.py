"""Every registered extractor against its own declaration (``capabilities``): the config grants exactly the
switches it declares, a built model reads and computes what it declares, and it saves, loads and describes
itself (card, predictor) accordingly. Parametrised by ``registry.model_names()``: an extractor added to the
registry is covered here without an edit (tests/models/test_capabilities.py checks that it is)."""

from __future__ import annotations

import dataclasses
from itertools import product

import pytest
import torch
from tests.models.conftest import LABELS, make_examples, tiny_config

from camim.data.types import MODALITIES
from camim.errors import CamimError
from camim.inference import Predictor
from camim.models import build_model, load_model, registry
from camim.models.card import read_front_matter
from camim.models.config import CAM_LEVELS, MI_PAIRS, VISUAL_MODES, ModelConfig


def names() -> tuple[str, ...]:
    """The registry's names, read when pytest collects this module."""
    return registry.model_names()


def refused_key(caps, cam: str, mi: bool, mode: str, pair: str) -> str | None:
    """The first key of a setting that asks the extractor for what ``caps`` does not declare (the order
    in which the config checks them), None when it declares everything asked."""
    if cam != "none" and not caps.cam:
        return "cam"
    if mi and not caps.mi:
        return "mi"
    if caps.visual_modes and mode not in caps.visual_modes:
        return "visual_mode"
    if mi and caps.mi_pairs is not None and pair not in caps.mi_pairs:
        return "mi_pair"
    return None


@pytest.mark.parametrize("name", names())
def test_the_config_grants_exactly_what_the_extractor_declares(name):
    caps = registry.capabilities(name)
    default = ModelConfig(name=name)
    assert (default.cam, default.mi) == ("both" if caps.cam else "none", caps.mi)
    assert ModelConfig.from_dict(default.to_dict()) == default  # the resolved defaults are written out
    for cam, mi, mode, pair in product(CAM_LEVELS, (False, True), VISUAL_MODES, MI_PAIRS):
        asked = {"name": name, "cam": cam, "mi": mi, "visual_mode": mode, "mi_pair": pair}
        key = refused_key(caps, cam, mi, mode, pair)
        if key is None:
            cfg = ModelConfig(**asked)
            assert (cfg.uses_cam, cfg.uses_mi) == (cam != "none", mi), asked
        else:
            with pytest.raises(CamimError, match=rf"^model\.{key}: {name} ") as err:
                ModelConfig(**asked)
            assert "\n" not in str(err.value)


def settings(caps) -> list[dict]:
    """One setting per supported visual mode x CAM off/on x MI off/on."""
    cams = ("none", "both") if caps.cam else ("none",)
    mis = (False, True) if caps.mi else (False,)
    pair = caps.mi_pairs[0] if caps.mi_pairs else "O&G"
    modes = caps.visual_modes or ("images",)
    return [
        {"visual_mode": mode, "cam": cam, "mi": mi, "mi_pair": pair}
        for mode, cam, mi in product(modes, cams, mis)
    ]


@pytest.mark.parametrize("name", names())
def test_a_built_model_reads_and_computes_what_its_extractor_declares(name, text_dir, vision_dir):
    caps = registry.capabilities(name)
    assert caps.reads <= set(MODALITIES)
    read = set()
    for setting in settings(caps):
        torch.manual_seed(0)
        model = build_model(
            tiny_config(text_dir, vision_dir, name=name, image_size=64, **setting), LABELS
        ).eval()
        assert type(model) is registry.model_class(name)
        assert model.required_modalities <= caps.reads, setting
        read |= model.required_modalities
        examples = make_examples(3, images=setting["visual_mode"] == "images")
        out = model(model.processor(examples))
        assert (out.mi_loss is not None) == model.config.uses_mi == setting["mi"], setting
        other = [dataclasses.replace(ex, caption="a red dog at a city team visit") for ex in examples]
        changed = not torch.allclose(out.logits, model(model.processor(other)).logits)
        assert changed == ("caption" in model.required_modalities), setting
    assert read == caps.reads  # every declared modality is read in some setting


@pytest.mark.parametrize("name", names())
def test_an_extractor_saves_loads_and_describes_itself(name, text_dir, vision_dir, tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_config(text_dir, vision_dir, name=name, image_size=64), LABELS).eval()
    cls, cfg = registry.model_class(name), model.config
    model.save_pretrained(tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert type(again) is cls and type(cls.from_pretrained(tmp_path / "m")) is cls
    assert again.state_dict().keys() == model.state_dict().keys()
    images = bool(cfg.capabilities.visual_modes) and cfg.visual_mode == "images"
    batch = model.processor(make_examples(2, images=images))
    torch.testing.assert_close(again(batch).logits, model(batch).logits, rtol=0, atol=0)
    for other in set(names()) - {name}:
        with pytest.raises(CamimError, match=f"holds a {cls.__name__} model, not a"):
            registry.model_class(other).from_pretrained(tmp_path / "m")
    card = (tmp_path / "m" / "README.md").read_text(encoding="utf-8")
    tags = read_front_matter(card)["tags"]
    assert ("caption-aware" in tags, "mutual-information" in tags) == (cfg.uses_cam, cfg.uses_mi)
    assert ("Caption-Aware Module" in card.split("## Inputs")[0]) == cfg.uses_cam
    assert f"It is {cls.summary}" in card
    info = Predictor(again).info()
    assert (info["cam"], info["mi"]) == (cfg.cam if cfg.uses_cam else "none", cfg.uses_mi)
    assert info["required_modalities"] == sorted(again.required_modalities)
