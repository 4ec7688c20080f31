from __future__ import annotations

import json

import pytest
import torch
from tests.models.conftest import LABELS, make_examples, tiny_config

from camim.cli import main
from camim.errors import CamimError
from camim.models import build_model, load_model
from camim.models.checkpoint import (
    MNRE_LABELS,
    hf_to_timm_resnet,
    load_reference_checkpoint,
    timm_to_hf_resnet,
    to_reference_state_dict,
)


@pytest.fixture(scope="module")
def camim_checkpoint(text_dir, vision_dir, tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(tiny_config(text_dir, vision_dir, cam="both", mi=True), MNRE_LABELS).eval()
    state = to_reference_state_dict(model)
    assert "sentence_encoder.bert2.embeddings.word_embeddings.weight" in state
    assert "sentence_encoder.attention.linear_q.0.weight" in state and "fc.weight" in state
    assert "sentence_encoder.model_resnet50.conv1.weight" in state
    state["sentence_encoder.linear_x.weight"] = torch.zeros(2, 2)  # unused released layers
    state["linear.weight"] = torch.zeros(2, 2)
    state["sentence_encoder.bert.pooler.dense.weight"] = torch.zeros(2, 2)
    state["sentence_encoder.bert2.embeddings.position_ids"] = torch.arange(8)[None]
    path = tmp_path_factory.mktemp("ckpt") / "camim.pth"
    torch.save({"state_dict": state}, path)
    return model, path


def test_round_trip_identical_logits(camim_checkpoint, text_dir, vision_dir):
    model, path = camim_checkpoint
    base = tiny_config(text_dir, vision_dir)
    loaded, report = load_reference_checkpoint(path, base)
    assert loaded.config.cam == "both" and loaded.config.mi and loaded.labels == MNRE_LABELS
    assert len(report.ignored) == 4 and report.matched == len(model.state_dict())
    batch = model.processor(make_examples(3))
    torch.testing.assert_close(loaded(batch).logits, model(batch).logits, rtol=0, atol=0)


def test_partial_loads_are_refused(camim_checkpoint, text_dir, vision_dir, tmp_path):
    _, path = camim_checkpoint
    state = torch.load(path, weights_only=True)["state_dict"]
    extra = dict(state, **{"sentence_encoder.mystery.weight": torch.zeros(1)})
    torch.save({"state_dict": extra}, tmp_path / "extra.pth")
    with pytest.raises(CamimError, match=r"no place in the model: \['sentence_encoder.mystery.weight'\]"):
        load_reference_checkpoint(tmp_path / "extra.pth", tiny_config(text_dir, vision_dir))
    short = {k: v for k, v in state.items() if not k.startswith("sentence_encoder.linear_phrases")}
    torch.save({"state_dict": short}, tmp_path / "short.pth")
    with pytest.raises(CamimError, match="absent from the checkpoint"):
        load_reference_checkpoint(tmp_path / "short.pth", tiny_config(text_dir, vision_dir))
    with pytest.raises(CamimError, match="not found"):
        load_reference_checkpoint(tmp_path / "none.pth", tiny_config(text_dir, vision_dir))


def test_tmr_checkpoint_without_bert2(text_dir, vision_dir, tmp_path):
    model = build_model(tiny_config(text_dir, vision_dir, cam="none", mi=False), LABELS).eval()
    state = to_reference_state_dict(model)
    assert not any(k.startswith("sentence_encoder.bert2.") for k in state)
    torch.save({"state_dict": state}, tmp_path / "tmr.pth")
    loaded, _ = load_reference_checkpoint(
        tmp_path / "tmr.pth", {**tiny_config(text_dir, vision_dir), "mi": False}, LABELS
    )
    assert loaded.config.cam == "none" and not hasattr(loaded, "bert2")
    batch = model.processor(make_examples(2))
    torch.testing.assert_close(loaded(batch).logits, model(batch).logits, rtol=0, atol=0)


def test_resnet_key_mapping_round_trip():
    for timm_key in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv3.weight",
        "layer4.2.bn2.bias",
        "layer2.0.downsample.0.weight",
        "layer3.0.downsample.1.num_batches_tracked",
    ]:
        assert hf_to_timm_resnet(timm_to_hf_resnet(timm_key)) == timm_key
    assert (
        timm_to_hf_resnet("layer1.0.conv3.weight") == "encoder.stages.0.layers.0.layer.2.convolution.weight"
    )
    assert timm_to_hf_resnet("fc.weight") is None


def test_convert_cli(camim_checkpoint, text_dir, vision_dir, tmp_path, capsys):
    model, path = camim_checkpoint
    rc = main(
        [
            "convert",
            str(path),
            "--output",
            str(tmp_path / "out"),
            "--text-encoder",
            str(text_dir),
            "--vision-encoder",
            str(vision_dir),
        ]
    )
    assert rc == 0 and "matched" in capsys.readouterr().out
    loaded = load_model(tmp_path / "out")
    assert loaded.config.max_length == 128  # CLI uses the default lengths
    assert main(["convert", str(tmp_path / "missing.pth"), "--output", str(tmp_path / "x")]) == 1


def test_convert_names_unknown_and_missing_keys_whatever_the_labels(
    camim_checkpoint, text_dir, vision_dir, tmp_path, capsys
):
    """Unknown and missing keys are named (a count and the first names, on one line) with or without
    --labels; before, a checkpoint without its classifier said only "classifier has None rows"."""
    _, path = camim_checkpoint
    state = torch.load(path, weights_only=True)["state_dict"]
    encoders = ["--text-encoder", str(text_dir), "--vision-encoder", str(vision_dir)]

    def convert(state: dict, *flags: str) -> str:
        torch.save(state, tmp_path / "ckpt.pth")  # a plain state dict, read back with weights_only=True
        assert (
            main(["convert", str(tmp_path / "ckpt.pth"), "--output", str(tmp_path / "o"), *encoders, *flags])
            == 1
        )
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        return err

    renamed = {k.replace("fc.", "head."): v for k, v in state.items()}  # the classifier under another name
    renamed["sentence_encoder.mystery.weight"] = torch.zeros(1)
    err = convert(renamed)
    assert "refusing a partial load: 3 checkpoint keys have no place in the model: " in err
    assert "['head.weight', 'head.bias', 'sentence_encoder.mystery.weight']" in err
    assert (
        "2 model tensors are absent from the checkpoint: ['fc.bias (model tensor classifier.fc.bias)', "
        in err
    )
    assert "None rows" not in err
    rel2id = tmp_path / "rel2id.json"
    rel2id.write_text(json.dumps({name: i for i, name in enumerate(MNRE_LABELS)}))
    assert convert(renamed, "--labels", str(rel2id)) == err  # the same answer with the labels
    # a classifier of another size and an unknown key: both said, in one line
    five = {**state, "fc.weight": torch.zeros(5, state["fc.weight"].shape[1]), "fc.bias": torch.zeros(5)}
    err = convert({**five, "sentence_encoder.mystery.weight": torch.zeros(1)})
    assert "1 checkpoint keys have no place in the model: ['sentence_encoder.mystery.weight']" in err
    assert "the classifier (fc.weight) has 5 rows, not MNRE's 23: pass the label names (--labels)" in err
    err = convert(five)  # its keys all fit: only the labels are missing
    assert err.endswith(
        "ckpt.pth: the classifier (fc.weight) has 5 rows, not MNRE's 23: pass the label names (--labels)\n"
    )
    err = convert({"encoder.layer.0.weight": torch.zeros(1), "head.weight": torch.zeros(1)})
    assert "not a released CAMIM/TMR or HVPNeT checkpoint" in err
    assert "its 2 keys begin ['encoder.layer.0.weight', 'head.weight']" in err
