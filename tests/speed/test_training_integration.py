"""The speed package wired into training: ``data.image_cache_dir``, ``speed.frozen_visual``, ``speed.fast``."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from safetensors.torch import load_file
from tests.lockstep import Lockstep, assert_same_weights
from tests.models.conftest import tiny_config

from camim.data import MNREDataset
from camim.errors import CamimError
from camim.models import load_model
from camim.models.encoders import VisionBackbone
from camim.optim import ForeachReleasedAdamW
from camim.speed.image_cache import ImageCache
from camim.speed.loading import CachedCollate
from camim.synthetic import WorldConfig, generate_world
from camim.training.api import train_run
from camim.training.config import load_config


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_world") / "w"
    generate_world(root, WorldConfig(train=12, val=6, test=4, image_size=48, generated_size=48))
    return root


def run_config(text_dir: Path, vision_dir: Path) -> dict:
    return {
        "name": "speed-test",
        "model": tiny_config(text_dir, vision_dir, name="tmr", image_size=32),
        "optim": {"batch_size": 4, "epochs": 2, "lr": 3e-3, "warmup_steps": 2, "seed": 3},
        "trainer": {"accelerator": "cpu", "progress_bar": False, "log_every_n_steps": 1},
    }


class Capture(L.Callback):
    """Keeps the module, datamodule and optimiser of a fit, and counts images through the vision backbone's
    network per training epoch."""

    def __init__(self):
        self.images_per_epoch: list[int] = []
        self.module = self.datamodule = self.optimizer = None

    def on_fit_start(self, trainer, pl_module):
        self.module, self.datamodule, self.optimizer = pl_module, trainer.datamodule, trainer.optimizers[0]
        pl_module.model.resnet.model.register_forward_hook(self._count)

    def _count(self, module, args, out):
        if self.images_per_epoch:
            self.images_per_epoch[-1] += args[0].shape[0]

    def on_train_epoch_start(self, trainer, pl_module):
        self.images_per_epoch.append(0)

    def on_train_epoch_end(self, trainer, pl_module):
        self.images_per_epoch.append(0)  # validation after the epoch counts apart from training


def weights(run) -> dict[str, torch.Tensor]:
    return load_file(str(run.model_dir / "model.safetensors"))


def scores(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("accuracy", "precision", "recall", "f1")}


def test_config_records_speed_options_and_validates(tmp_path):
    cfg = load_config("tmr", ["data.image_cache_dir=/c", "speed.frozen_visual=true", "speed.fast=true"])
    d = yaml.safe_load(cfg.to_yaml())
    assert d["data"]["image_cache_dir"] == "/c"
    assert d["speed"]["frozen_visual"] is True and d["speed"]["fast"] is True
    plain = load_config("tmr").to_dict()
    assert plain["data"]["image_cache_dir"] is None
    assert not plain["speed"]["fast"] and not plain["speed"]["frozen_visual"]
    with pytest.raises(CamimError, match="needs data.image_cache_dir"):
        load_config("tmr", ["speed.frozen_visual=true"])
    with pytest.raises(CamimError, match="need speed.fast"):
        load_config("tmr", ["speed.skip_padded_crops=true"])
    with pytest.raises(CamimError, match="speed.compile"):
        load_config("tmr", ["speed.fast=true", "speed.compile=fastest"])
    with pytest.raises(CamimError, match="unknown key"):
        load_config("tmr", ["speed.turbo=true"])


@pytest.fixture(scope="module")
def decoding_run(world, text_dir, vision_dir, tmp_path_factory):
    """The plain run (images decoded every step) that the cached runs must equal."""
    return train_run(run_config(text_dir, vision_dir), world, tmp_path_factory.mktemp("decoding") / "plain")


@pytest.mark.parametrize("uint8", [False, True], ids=["float-batches", "uint8-batches"])
def test_image_cache_run_equals_the_decoding_run(world, text_dir, vision_dir, tmp_path, uint8, decoding_run):
    cfg = run_config(text_dir, vision_dir)
    plain = decoding_run
    cache_dir = tmp_path / "images"
    cb = Capture()
    cached = train_run(
        cfg,
        world,
        tmp_path / "cached",
        overrides=[f"data.image_cache_dir={cache_dir}", f"data.image_cache_uint8={str(uint8).lower()}"],
        callbacks=[cb],
    )
    collate = cb.datamodule.train_dataloader().collate_fn
    assert isinstance(collate, CachedCollate) and collate.uint8 is uint8
    loaded = next(iter(cb.datamodule.train_dataloader()))
    assert loaded.image.dtype == (torch.uint8 if uint8 else torch.float32)
    # what the step sees after the transfer: the processor's float pixels either way
    on_device = cb.datamodule.on_after_batch_transfer(loaded, 0)
    assert on_device.image.dtype == on_device.objects.dtype == torch.float32
    assert on_device.objects.shape[2] == 3  # (B, m, 3, S, S)
    assert not set(cb.datamodule.dataset("train").modalities) & {
        "image",
        "objects",
    }  # nothing decoded per step
    for split in ("train", "val", "test"):
        assert ImageCache(cache_dir / split).complete
    assert scores(cached.metrics["val"]) == scores(plain.metrics["val"])
    assert scores(cached.metrics["test"]) == scores(plain.metrics["test"])
    assert cached.metrics["global_step"] == plain.metrics["global_step"] > 0
    a, b = weights(plain), weights(cached)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical batches
    recorded = yaml.safe_load((tmp_path / "cached" / "config.yaml").read_text())
    assert recorded["data"]["image_cache_dir"] == str(cache_dir)
    assert (tmp_path / "cached" / "predictions.jsonl").read_text() == (
        plain.output_dir / "predictions.jsonl"
    ).read_text()


def test_uint8_batches_get_the_precision_plugins_dtype_after_the_transfer(
    world, text_dir, vision_dir, tmp_path
):
    """bf16-true casts a batch's float tensors before the transfer; uint8 pixels become float after it, and
    then get the same cast: the cached uint8 run equals the decoding run under bf16-true too."""
    cfg = run_config(text_dir, vision_dir)
    cfg["trainer"]["precision"] = "bf16-true"
    cfg["optim"]["epochs"] = 1
    plain = train_run(cfg, world, tmp_path / "plain")
    cb = Capture()
    cached = train_run(
        cfg,
        world,
        tmp_path / "cached",
        overrides=[f"data.image_cache_dir={tmp_path / 'images'}", "data.image_cache_uint8=true"],
        callbacks=[cb],
    )
    loaded = next(iter(cb.datamodule.train_dataloader()))
    assert loaded.image.dtype == torch.uint8
    assert cb.datamodule.on_after_batch_transfer(loaded, 0).image.dtype == torch.bfloat16
    assert scores(cached.metrics["test"]) == scores(plain.metrics["test"])
    a, b = weights(plain), weights(cached)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_frozen_visual_computes_features_once_across_epochs_and_runs(
    world, text_dir, vision_dir, tmp_path, monkeypatch
):
    computed = []
    real = VisionBackbone.features
    monkeypatch.setattr(
        VisionBackbone,
        "features",
        lambda backbone, pixels, kind: computed.append(pixels.shape[0]) or real(backbone, pixels, kind),
    )
    cfg = run_config(text_dir, vision_dir)
    sets = [
        f"data.image_cache_dir={tmp_path / 'images'}",
        "speed.frozen_visual=true",
        f"speed.feature_cache_dir={tmp_path / 'features'}",
    ]
    first_cb = Capture()
    first = train_run(cfg, world, tmp_path / "run1", overrides=sets, callbacks=[first_cb])
    caches = [ImageCache(tmp_path / "images" / s) for s in ("train", "val", "test")]
    assert sum(computed) == sum(
        len(c) + 1 for c in caches
    )  # every cached image once (+ one zero image/split)
    assert first_cb.images_per_epoch and sum(first_cb.images_per_epoch) == 0  # no backbone call in any epoch
    assert len(first_cb.images_per_epoch) >= 4  # two epochs ran
    module = first_cb.module
    assert module.model.resnet.feature_kind == "tokens"  # the store is attached to the model's own backbone
    assert not any(p.requires_grad for p in module.model.resnet.parameters())
    frozen_ids = {id(p) for p in module.model.resnet.parameters()}
    assert not any(id(p) in frozen_ids for g in first_cb.optimizer.param_groups for p in g["params"])

    # logits of the frozen-visual path == the same weights with the frozen backbone run on the images
    model = module.model.eval()
    dm = first_cb.datamodule
    with torch.no_grad():
        fast = torch.cat([model(b).logits for b in dm.val_dataloader()])
        assert dm.val_dataloader().dataset.read_pixels is False
        plain_model = load_model(first.model_dir).eval()
        examples = MNREDataset(world, "val", modalities=plain_model.required_modalities)
        plain = plain_model(plain_model.processor([examples[i] for i in range(len(examples))])).logits
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)

    # a second run reuses the image caches and the feature shards: no decoding, no backbone call
    computed.clear()
    monkeypatch.setattr(ImageCache, "build", classmethod(lambda *a, **k: pytest.fail("image cache rebuilt")))
    second_cb = Capture()
    second = train_run(cfg, world, tmp_path / "run2", overrides=sets, callbacks=[second_cb])
    assert computed == [] and sum(second_cb.images_per_epoch) == 0
    assert scores(second.metrics["val"]) == scores(first.metrics["val"])
    a, b = weights(first), weights(second)
    assert all(torch.equal(a[k], b[k]) for k in a)


def plain_and_fast_runs(world, text_dir, vision_dir, tmp_path):
    """One epoch of ``speed.fast`` (multi-tensor AdamW) and of the plain run on the same config, in
    :class:`Lockstep` (the plain run compares each step's gradients with the fast run's and updates from
    those); the fast run's module, datamodule and optimiser are kept by the returned :class:`Capture`."""
    cfg = run_config(text_dir, vision_dir)
    cfg["optim"]["epochs"] = 1
    cb, fast_steps = Capture(), Lockstep()
    overrides = ["speed.fast=true", "speed.fused_optimizer=true"]
    fast = train_run(cfg, world, tmp_path / "fast", overrides=overrides, callbacks=[cb, fast_steps])
    plain_steps = Lockstep(fast_steps.steps)
    plain = train_run(cfg, world, tmp_path / "plain", callbacks=[plain_steps])
    assert len(plain_steps.steps) == len(fast_steps.steps) == fast.metrics["global_step"] > 1
    assert_same_weights(
        weights(plain), weights(fast), cb.module.model
    )  # same keys: apply_fast_mode keeps them
    return plain, fast, cb


def test_fast_mode_runs_on_cpu_and_matches_the_plain_run(
    world, text_dir, vision_dir, tmp_path, deterministic
):
    """SDPA vs eager attention and multi-tensor AdamW: each step's gradients equal up to fp32 noise, and the
    same update from equal gradients (tests/lockstep.py)."""
    plain, fast, cb = plain_and_fast_runs(world, text_dir, vision_dir, tmp_path)
    assert isinstance(cb.optimizer, ForeachReleasedAdamW)
    assert cb.module.speed.step is not None and not cb.module.speed.step.cfg.bf16  # bf16 only on CUDA
    assert cb.module.speed.step.cfg.compile == "none"
    assert fast.metrics["global_step"] == plain.metrics["global_step"] > 0
    assert yaml.safe_load((tmp_path / "fast" / "config.yaml").read_text())["speed"]["fast"] is True


def test_a_step_that_owns_backward_trains_like_the_plain_run_in_lightning(
    world, text_dir, vision_dir, tmp_path, monkeypatch, deterministic
):
    """The CUDA-graph path inside Lightning, checked eagerly on CPU: the module's training step runs forward +
    backward itself, Lightning's backward and zero_grad are skipped, and the run equals the plain one (each
    step's gradients and the update from them, tests/lockstep.py)."""
    from camim.speed.training import TrainingSpeed

    monkeypatch.setattr(TrainingSpeed, "owns_backward", property(lambda self: self.step is not None))
    plain, fast, cb = plain_and_fast_runs(world, text_dir, vision_dir, tmp_path)
    stats = cb.module.speed.step.forward_backward.stats
    assert stats.eager_steps == fast.metrics["global_step"] == plain.metrics["global_step"] > 0
    assert fast.metrics["speed"]["graphs"]["eager_steps"] == stats.eager_steps


def test_foreach_casts_train_like_autocast_in_lightning(world, text_dir, vision_dir, tmp_path, monkeypatch):
    """speed.foreach_casts inside ``camim train`` (bf16 autocast on CPU, the step owning backward as under CUDA
    graphs): weights and metrics equal the run where autocast casts each weight itself, bit for bit."""
    from camim.speed.training import TrainingSpeed

    monkeypatch.setattr(TrainingSpeed, "owns_backward", property(lambda self: self.step is not None))
    cfg = run_config(text_dir, vision_dir)
    cfg["optim"]["epochs"] = 1
    runs, steps = {}, {}
    for on in (False, True):
        cb = Capture()
        sets = ["speed.fast=true", "speed.bf16=true", f"speed.foreach_casts={str(on).lower()}"]
        runs[on] = train_run(cfg, world, tmp_path / str(on), overrides=sets, callbacks=[cb])
        steps[on] = cb.module.speed.step
    assert steps[False].weight_casts is None
    casts = steps[True].weight_casts
    assert len(casts.names) > 50 and "bert.encoder.layer.0.attention.self.query.weight" in casts.names
    assert casts.calls > runs[True].metrics["global_step"] > 0  # every training step and evaluation forward
    assert runs[True].metrics["speed"]["resolved"]["foreach_casts"] is True
    assert scores(runs[True].metrics["val"]) == scores(runs[False].metrics["val"])
    a, b = weights(runs[False]), weights(runs[True])
    assert all(torch.equal(a[k], b[k]) for k in a)
