"""Frozen-visual mode in the models: feature-row ids in ``MREBatch.*_rows``, a feature table attached to the
model's own ``VisionBackbone`` (no module replaced), the same logits as the frozen backbone on the pixels."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from tests.models.conftest import LABELS, frozen_visual_batch, make_examples, tiny_config

from camim.errors import CamimError, DataError
from camim.models import build_model, load_model
from camim.models.batch import MREBatch
from camim.models.encoders import VisionBackbone

ROWS = ("image_rows", "objects_rows", "generated_image_rows", "generated_objects_rows")


def _model(text_dir, vision_dir, name: str):
    torch.manual_seed(0)
    size = {"image_size": 64} if name == "hvpnet" else {}  # HVPNeT pools every stage map to 2x2
    return build_model(
        tiny_config(text_dir, vision_dir, name=name, cam="both", mi=True, **size), LABELS
    ).eval()


def test_rows_fields_round_trip_through_to_and_pin_memory(monkeypatch):
    rows = {
        "image_rows": torch.tensor([3, 0]),
        "objects_rows": torch.tensor([[1, 9], [2, 9]]),
        "generated_image_rows": torch.tensor([4, 5]),
        "generated_objects_rows": torch.tensor([[6, 9], [9, 9]]),
    }
    batch = MREBatch(
        torch.ones(2, 5, dtype=torch.long), torch.ones(2, 5), torch.zeros(2), torch.ones(2), **rows
    )
    moved = batch.to("meta")
    for name in ROWS:
        got = getattr(moved, name)
        assert got.device.type == "meta" and got.shape == rows[name].shape and got.dtype == torch.long, name
    # pinning needs an accelerator; the copy it would make is stood in for by a clone (MREBatch maps each field)
    pinned_ids = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: pinned_ids.append(id(t)) or t.clone())
    pinned = batch.pin_memory()
    for name in ROWS:
        assert id(rows[name]) in pinned_ids and getattr(pinned, name) is not rows[name], name
        assert torch.equal(getattr(pinned, name), rows[name]), name
    assert pinned.image is None and pinned.objects is None


@pytest.mark.parametrize("name", ["tmr", "hvpnet"])
def test_frozen_visual_logits_equal_the_backbone_on_pixels(text_dir, vision_dir, tmp_path, name):
    model = _model(text_dir, vision_dir, name)
    batch = model.processor(make_examples(3))
    keys = list(model.state_dict().keys())
    with torch.no_grad():
        plain = model(batch).logits
    table, rows_batch = frozen_visual_batch(model, batch)
    assert rows_batch.image is None and rows_batch.image_rows.shape == (3,)
    assert rows_batch.objects_rows.shape == (3, 3) and rows_batch.objects_rows[0, 1] == table[0].shape[0] - 1
    frozen = copy.deepcopy(model)
    backbone = frozen.resnet
    assert frozen.resnet.attach_features(model.visual_feature_kind, table) is backbone  # no module replaced
    with torch.no_grad():
        torch.testing.assert_close(frozen(rows_batch).logits, plain, rtol=1e-5, atol=1e-5)
        # a batch with pixels still runs the (frozen) backbone: the same logits
        torch.testing.assert_close(frozen(batch).logits, plain, rtol=1e-5, atol=1e-5)

    # frozen: no gradient, BatchNorm on running statistics even in train mode
    frozen.train()
    assert frozen.resnet.training and not frozen.resnet.model.training
    assert not any(m.training for m in frozen.resnet.model.modules())
    assert not any(p.requires_grad for p in frozen.resnet.parameters())
    # the table is non-persistent: state-dict keys (and so save_pretrained / checkpoints) are unchanged
    assert list(frozen.state_dict().keys()) == keys
    new_buffers = {n for n, _ in frozen.named_buffers()} - {n for n, _ in model.named_buffers()}
    assert new_buffers == {f"resnet.features_{i}" for i in range(len(table))}
    loaded = load_model(frozen.save_pretrained(tmp_path / "saved")).eval()
    assert loaded.resnet.feature_kind is None
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch).logits, plain, rtol=1e-5, atol=1e-5)


def test_rows_are_refused_without_a_matching_table(text_dir, vision_dir):
    model = _model(text_dir, vision_dir, "tmr")
    table, rows_batch = frozen_visual_batch(model, model.processor(make_examples(2)))
    with pytest.raises(CamimError, match="no feature table attached"):
        model(rows_batch)
    with pytest.raises(CamimError, match="'tokens' feature table is 1 tensor"):
        model.resnet.attach_features("tokens", table + table)
    model.resnet.attach_features("tokens", table)
    with pytest.raises(
        CamimError, match="consumes 'pyramid' features; the attached feature table holds 'tokens'"
    ):
        model.resnet.lookup(rows_batch.image_rows, "pyramid")
    with pytest.raises(DataError, match="out of range"):
        model(dataclasses.replace(rows_batch, image_rows=rows_batch.image_rows + 1000))
    with pytest.raises(CamimError, match="must be int64"):
        model.resnet.lookup(rows_batch.image_rows.int(), "tokens")
    assert isinstance(model.resnet, VisionBackbone)
