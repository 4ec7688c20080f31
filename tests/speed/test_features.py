from __future__ import annotations

import copy

import pytest
import torch
from tests.models.conftest import tiny_config
from tests.speed.conftest import TEXT, dataset

from camim.errors import CamimError, DataError
from camim.models import build_model, load_model
from camim.speed.features import build_feature_store, feature_kind_for, use_cached_features
from camim.speed.image_cache import ImageCache, ImageCacheSpec
from camim.speed.loading import CachedCollate, CachedImageDataset, FeatureRowsCollate


class CallCounter:
    """Counts images through a module's forward."""

    def __init__(self, module):
        self.images = 0
        module.register_forward_hook(self)

    def __call__(self, module, args, kwargs_or_out, *rest):
        self.images += args[0].shape[0]


@pytest.fixture(scope="module")
def setup(world, text_dir, vision_dir, tmp_path_factory):
    """make(name) -> (a fresh copy of the model, the image cache); each built once per module."""
    built = {}

    def make(name):
        if name not in built:
            torch.manual_seed(0)
            full = dataset(world)
            size = 64 if name == "hvpnet" else 32
            cfg = tiny_config(text_dir, vision_dir, name=name, image_size=size)
            model = build_model(cfg, list(full.labels.names))
            folder = tmp_path_factory.mktemp(f"img-{name}")
            built[name] = model, ImageCache.build(full, folder, ImageCacheSpec.for_model(model.config))
        model, cache = built[name]
        return copy.deepcopy(model), cache

    return make


@pytest.mark.parametrize("name", ["tmr", "hvpnet"])
def test_cached_features_give_the_logits_of_the_frozen_backbone(setup, world, tmp_path, name):
    model, cache = setup(name)
    model.eval()  # frozen visual backbone: BatchNorm on running statistics
    text_ds = dataset(world, TEXT)
    items = [CachedImageDataset(text_ds, cache)[i] for i in range(6)]
    plain = model(CachedCollate(model.processor)(items)).logits

    kind = feature_kind_for(model)
    store = build_feature_store(
        model.resnet, cache, tmp_path / "feats", kind=kind, batch_size=7, shard_rows=16
    )
    assert store.computed_images == len(cache) + 1 and store.zero_row == len(cache)
    frozen = use_cached_features(copy.deepcopy(model), store).eval()
    rows_batch = FeatureRowsCollate(model.processor, store.zero_row)(items)
    assert rows_batch.image_rows.shape == (6,) and rows_batch.objects_rows.shape == (6, 3)
    assert rows_batch.image is None and rows_batch.objects is None  # pixel fields hold pixels or nothing
    fast = frozen(rows_batch).logits
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for p in frozen.resnet.parameters())
    assert frozen.state_dict().keys() == model.state_dict().keys()
    with pytest.raises(DataError, match="out of range"):
        frozen.resnet.lookup(torch.tensor([len(store)]), kind)
    # rows without an attached table, or a table of the other kind, are refused with a one-line reason
    with pytest.raises(CamimError, match="no feature table attached"):
        model(rows_batch)
    with pytest.raises(CamimError, match="attached feature table holds"):
        frozen.resnet.lookup(torch.tensor([0]), "pyramid" if kind == "tokens" else "tokens")
    # The swap used to refuse pixel batches ("row ids"); the backbone is now the model's own, so a batch
    # with pixels runs it (frozen, BN on running statistics): the same logits
    torch.testing.assert_close(
        frozen(CachedCollate(model.processor)(items)).logits, plain, rtol=1e-5, atol=1e-5
    )


def test_backbone_runs_once_across_epochs_and_runs(setup, world, tmp_path):
    model, cache = setup("tmr")
    counter = CallCounter(model.resnet.model)
    store = build_feature_store(model.resnet, cache, tmp_path / "feats", shard_rows=16)
    first_build = counter.images
    assert first_build == len(cache) + 1
    model = use_cached_features(model, store)
    model.train()
    ds = CachedImageDataset(dataset(world, TEXT), cache, read_pixels=False)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=4, collate_fn=FeatureRowsCollate(model.processor, store.zero_row)
    )
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _epoch in range(2):
        for batch in loader:
            loss = model(batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
    assert counter.images == first_build  # no backbone call in either epoch
    again = build_feature_store(model.resnet, cache, tmp_path / "feats", shard_rows=16)
    assert again.computed_images == 0 and counter.images == first_build  # a second run reuses the shards
    torch.testing.assert_close(again.tensors[0], store.tensors[0], rtol=0, atol=0)


def test_store_is_keyed_by_weights_and_resumes(setup, tmp_path):
    model, cache = setup("tmr")
    with pytest.raises(CamimError, match="stopped after 1"):
        build_feature_store(model.resnet, cache, tmp_path / "f", shard_rows=8, stop_after_shards=1)
    resumed = build_feature_store(model.resnet, cache, tmp_path / "f", shard_rows=8)
    assert resumed.computed_images == len(cache) + 1 - 8
    with torch.no_grad():
        next(model.resnet.parameters()).add_(1.0)
    other = build_feature_store(model.resnet, cache, tmp_path / "f", shard_rows=8)
    assert other.directory != resumed.directory and other.computed_images == len(cache) + 1


def test_frozen_visual_model_saves_and_loads(setup, tmp_path):
    model, cache = setup("tmr")
    store = build_feature_store(model.resnet, cache, tmp_path / "f")
    frozen = use_cached_features(model, store)
    frozen.save_pretrained(tmp_path / "saved")
    loaded = load_model(tmp_path / "saved")
    for (k, a), (k2, b) in zip(frozen.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
