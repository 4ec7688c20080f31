"""Released checkpoint layouts, tensor by tensor (tests/models/fixtures/released_*.tsv, written from the
released model definitions by make_released_layouts.py): a state dict with exactly those names and shapes
(random values) loads strictly into a bert-base / ResNet-50 sized camim model, each sampled value lands in the
intended parameter, and a missing, extra, renamed or mis-shaped key is refused with a message naming it.

Full-size models: about 10 s per load on CPU. The refusal tests build only a meta-device skeleton."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from tests.models.conftest import LABELS, make_examples, tiny_config

from camim.cli import main
from camim.errors import CamimError
from camim.models import build_model, load_model
from camim.models.checkpoint import load_reference_state_dict, to_reference_state_dict

FIXTURES = Path(__file__).parent / "fixtures"
SE = "sentence_encoder."


def layout(name: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    rows = (line.split("\t") for line in (FIXTURES / f"released_{name}.tsv").read_text().splitlines())
    return {n: (dtype, tuple(int(x) for x in shape.split("x")) if shape else ()) for n, dtype, shape in rows}


def tmr_layout() -> dict[str, tuple[str, tuple[int, ...]]]:
    """TMR's released layout: CAMIM's without bert2, the CAM layers and linear_x (reference §6, §9)."""
    cam = re.compile(
        rf"^{SE}(bert2|attention|encoder_conv_sentence|encoder_conv_word|encoder_conv_back|linear_x)\."
    )
    return {k: v for k, v in layout("camim").items() if not cam.match(k)}


def fill(spec: dict, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Random values with exactly the listed names, dtypes and shapes."""
    gen = torch.Generator().manual_seed(0)
    out = {}
    for name, (dtype, shape) in spec.items():
        if device == "meta":
            out[name] = torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
        elif dtype == "int64":
            out[name] = torch.randint(0, 512, shape, generator=gen)
        else:
            out[name] = torch.randn(shape, generator=gen)
    return out


def numel(spec: dict, prefix: str = "") -> int:
    return sum(math.prod(shape) for name, (_, shape) in spec.items() if name.startswith(prefix))


def test_fixtures_match_the_reference_figures():
    """reference §9: 773 tensors, 272,154,201 parameters, per-module parameters + persistent buffers."""
    camim = layout("camim")
    assert len(camim) == 773
    buffers = ("running_mean", "running_var", "num_batches_tracked", "position_ids")
    assert sum(math.prod(s) for n, (_, s) in camim.items() if not n.endswith(buffers)) == 272_154_201
    figures = {
        "bert2.": 109_482_752,
        "bert.": 109_482_240,
        "model_resnet50.": 25_610_205,
        "linear_final.": 7_079_424,
        "attention.": 4_134_144,
        "encoder_conv_word.": 2_361_600,
        "encoder_conv_back.": 2_361_600,
        "linear_pic.": 1_573_632,
        "linear_phrases.": 1_181_184,
        "encoder_conv_sentence.": 1_180_416,
        "linear_q_fine.": 590_592,
        "linear_v_coarse.": 590_592,
        "linear_extend_pic.": 590_592,
        "linear.": 2_360_832,
        "linear_x.": 1_181_184,
        "linear_weights.": 13_827,
    }
    for prefix, n in figures.items():
        assert numel(camim, SE + prefix) == n, prefix
    assert numel(camim, "fc.") == numel(camim, "linear.") == 35_351
    assert len(tmr_layout()) == 773 - 200 - 14 - 2 - 4 - 4 - 2
    hv = layout("hvpnet")
    assert len(hv) == 550
    assert numel(hv, "bert.") == 109_482_240 + 4 * 768 + 512  # 4 marker rows, position_ids
    assert numel(hv, "image_model.resnet.") == 25_610_205  # torchvision resnet50 = timm's, fc included
    assert numel(hv, "encoder_conv.") == 3840 * 800 + 800 + 800 * 6144 + 6144
    assert numel(hv, "gates.") == 12 * (6144 * 4 + 4) and numel(hv, "classifier.") == 35_351


def assert_lands(model, state: dict, sample: dict[str, str]) -> None:
    ours = model.state_dict()
    for released, key in sample.items():
        assert torch.equal(ours[key], state[released]), f"{released} -> {key}"


CAMIM_SAMPLE = {  # released name -> camim parameter, written out by hand
    f"{SE}bert.embeddings.word_embeddings.weight": "bert.embeddings.word_embeddings.weight",
    f"{SE}bert.encoder.layer.7.attention.self.key.bias": "bert.encoder.layer.7.attention.self.key.bias",
    f"{SE}bert2.encoder.layer.11.output.dense.weight": "bert2.encoder.layer.11.output.dense.weight",
    f"{SE}model_resnet50.conv1.weight": "resnet.model.embedder.embedder.convolution.weight",
    f"{SE}model_resnet50.bn1.running_var": "resnet.model.embedder.embedder.normalization.running_var",
    f"{SE}model_resnet50.layer3.5.bn3.running_mean": "resnet.model.encoder.stages.2.layers.5.layer.2.normalization.running_mean",
    f"{SE}model_resnet50.layer4.0.downsample.0.weight": "resnet.model.encoder.stages.3.layers.0.shortcut.convolution.weight",
    f"{SE}model_resnet50.layer2.1.conv2.weight": "resnet.model.encoder.stages.1.layers.1.layer.1.convolution.weight",
    f"{SE}linear_pic.weight": "linear_pic.weight",
    f"{SE}encoder_conv_sentence.0.weight": "cam.encoder_conv_sentence.0.weight",
    f"{SE}encoder_conv_word.2.bias": "cam.encoder_conv_word.2.bias",
    f"{SE}encoder_conv_back.0.weight": "cam.encoder_conv_back.0.weight",
    f"{SE}attention.linear_k2.0.weight": "cam.attention.linear_k2.0.weight",
    f"{SE}attention.merge_fr.0.bias": "cam.attention.merge_fr.0.bias",
    f"{SE}linear_q_fine.weight": "fusion.linear_q_fine.weight",
    f"{SE}linear_v_coarse.bias": "fusion.linear_v_coarse.bias",
    f"{SE}linear_extend_pic.weight": "fusion.linear_extend_pic.weight",
    f"{SE}linear_phrases.weight": "linear_phrases.weight",
    f"{SE}linear_final.weight": "classifier.linear_final.weight",
    "fc.weight": "classifier.fc.weight",
    "fc.bias": "classifier.fc.bias",
}  # fmt: skip


def test_released_camim_layout_loads_strictly(base_dirs):
    state = fill(layout("camim"))
    model, report = load_reference_state_dict(state, base_dirs)
    assert (model.config.name, model.config.cam, model.config.mi) == ("tmr", "both", True)
    assert report.matched == 758 == len(model.state_dict())
    assert sorted(report.ignored) == sorted(
        [f"{SE}{b}.pooler.dense.{p}" for b in ("bert", "bert2") for p in ("weight", "bias")]
        + [f"{SE}model_resnet50.fc.{p}" for p in ("weight", "bias")]
        + [f"{m}.{p}" for m in (f"{SE}linear", f"{SE}linear_weights", f"{SE}linear_x", "linear") for p in ("weight", "bias")]
        + [f"{SE}bert2.embeddings.position_ids"]
    )  # fmt: skip
    assert_lands(model, state, CAMIM_SAMPLE)


def test_released_tmr_layout_loads_strictly(base_dirs):
    state = fill(tmr_layout())
    model, report = load_reference_state_dict(state, {**base_dirs, "mi": False})
    assert (model.config.cam, model.config.mi) == ("none", False) and not hasattr(model, "bert2")
    assert report.matched == 537 == len(model.state_dict()) and len(report.ignored) == 547 - 537
    assert_lands(model, state, {k: v for k, v in CAMIM_SAMPLE.items() if k in state})


HVPNET_SAMPLE = {
    "bert.embeddings.word_embeddings.weight": "bert.embeddings.word_embeddings.weight",
    "bert.encoder.layer.3.intermediate.dense.weight": "bert.encoder.layer.3.intermediate.dense.weight",
    "image_model.resnet.conv1.weight": "resnet.model.embedder.embedder.convolution.weight",
    "image_model.resnet.layer2.3.conv2.weight": "resnet.model.encoder.stages.1.layers.3.layer.1.convolution.weight",
    "image_model.resnet.layer1.0.downsample.1.running_mean": "resnet.model.encoder.stages.0.layers.0.shortcut.normalization.running_mean",
    "image_model.resnet.layer4.2.bn1.num_batches_tracked": "resnet.model.encoder.stages.3.layers.2.layer.0.normalization.num_batches_tracked",
    "encoder_conv.0.weight": "encoder_conv.0.weight",
    "encoder_conv.2.bias": "encoder_conv.2.bias",
    "gates.0.weight": "gates.0.weight",
    "gates.11.bias": "gates.11.bias",
    "classifier.weight": "classifier.weight",
}  # fmt: skip


def test_released_hvpnet_layout_loads_strictly(base_dirs):
    """HVPNeT's HMNeTREModel: bert.*, image_model.resnet.* (torchvision names), encoder_conv.*, gates.*,
    classifier.*; the four added marker rows line up with camim's <s> </s> <o> </o> ids."""
    state = fill(layout("hvpnet"))
    model, report = load_reference_state_dict(state, base_dirs)
    assert (model.config.name, model.config.cam, model.config.mi) == ("hvpnet", "none", False)
    assert (model.config.hvpnet_prefix_hidden, model.config.hvpnet_prompt_len) == (800, 4)
    assert report.matched == 545 == len(model.state_dict())
    assert sorted(report.ignored) == sorted(
        ["bert.pooler.dense.weight", "bert.pooler.dense.bias", "image_model.resnet.fc.weight"]
        + ["image_model.resnet.fc.bias", "bert.embeddings.position_ids"]
    )
    assert_lands(model, state, HVPNET_SAMPLE)
    assert model.processor.marker_ids == [30522, 30523, 30524, 30525]  # HVPNeT's added <s> </s> <o> </o>


def camim_spec() -> dict:
    return layout("camim")


@pytest.mark.parametrize(
    "spec,edit,message",
    [
        (camim_spec, ("drop", f"{SE}attention.linear_v2.0.bias"),
         rf"absent from the checkpoint: \['{SE}attention.linear_v2.0.bias \(model tensor cam.attention.linear_v2.0.bias\)'\]"),
        (camim_spec, ("add", f"{SE}mystery.weight"), rf"no place in the model: \['{SE}mystery.weight'\]"),
        (camim_spec, ("rename", f"{SE}linear_q_fine.weight", f"{SE}linear_query_fine.weight"),
         rf"no place in the model: \['{SE}linear_query_fine.weight'\].*absent from the checkpoint: \['{SE}linear_q_fine.weight"),
        (camim_spec, ("reshape", f"{SE}linear_pic.weight", (768, 1024)),
         rf"shape mismatches .*\['{SE}linear_pic.weight \(768, 1024\) vs \(768, 2048\)'\]"),
        (tmr_layout, ("drop", f"{SE}model_resnet50.layer3.2.bn1.running_var"),
         rf"absent from the checkpoint: \['{SE}model_resnet50.layer3.2.bn1.running_var"),
        (lambda: layout("hvpnet"), ("rename", "gates.11.weight", "gate.11.weight"),
         r"no place in the model: \['gate.11.weight'\].*absent from the checkpoint: \['gates.11.weight"),
        (lambda: layout("hvpnet"), ("drop", "image_model.resnet.layer1.0.downsample.0.weight"),
         r"absent from the checkpoint: \['image_model.resnet.layer1.0.downsample.0.weight \(model tensor resnet.model.encoder.stages.0.layers.0.shortcut.convolution.weight\)'\]"),
    ],
    ids=["camim-missing", "camim-extra", "camim-renamed", "camim-shape", "tmr-missing", "hvpnet-renamed", "hvpnet-missing"],
)  # fmt: skip
def test_partial_released_state_dicts_are_refused_naming_the_key(base_dirs, spec, edit, message):
    state = fill(spec(), device="meta")  # refused before any weight is allocated
    kind, key = edit[:2]
    if kind == "drop":
        del state[key]
    elif kind == "add":
        state[key] = torch.empty(2, 2, device="meta")
    elif kind == "rename":
        state[edit[2]] = state.pop(key)
    else:
        state[key] = torch.empty(edit[2], device="meta")
    with pytest.raises(CamimError, match=f"^state dict: refusing a partial load: .*{message}"):
        load_reference_state_dict(state, base_dirs)


def test_not_a_released_layout():
    with pytest.raises(CamimError, match="not a released CAMIM/TMR or HVPNeT checkpoint"):
        load_reference_state_dict({"encoder.weight": torch.zeros(1)})


def test_convert_cli_accepts_the_hvpnet_layout(text_dir, vision_dir, tmp_path, capsys):
    """A tiny HVPNeT saved in HMNeTREModel naming converts to a camim folder with identical logits."""
    torch.manual_seed(0)
    cfg = tiny_config(text_dir, vision_dir, name="hvpnet", image_size=64, cam="none", mi=False)
    model = build_model(cfg, LABELS).eval()
    state = to_reference_state_dict(model)
    assert "image_model.resnet.layer1.0.conv1.weight" in state and "gates.1.weight" in state
    state["bert.pooler.dense.weight"] = torch.zeros(2, 2)  # ignored by name, as HVPNeT's BERT has one
    torch.save(state, tmp_path / "best_model.pth")  # HVPNeT saves the bare state dict
    args = ["convert", str(tmp_path / "best_model.pth"), "--output", str(tmp_path / "out")]
    assert main([*args, "--text-encoder", str(text_dir), "--vision-encoder", str(vision_dir), "--labels", str(write_rel2id(tmp_path))]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "matched" in out and "hvpnet" in out
    loaded = load_model(tmp_path / "out")
    batch = model.processor(make_examples(2))  # the tiny config's lengths and image size; same weights
    torch.testing.assert_close(loaded(batch).logits, model(batch).logits, rtol=0, atol=0)


def write_rel2id(folder: Path) -> Path:
    import json

    path = folder / "rel2id.json"
    path.write_text(json.dumps({name: i for i, name in enumerate(LABELS)}))
    return path
