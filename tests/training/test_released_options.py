"""The released trainers' options (reference §2, §5.1): which parameters a step changes, which stay
bit-identical, BatchNorm statistics moving, the dev-selection tie rule and the unrounded warmup."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from tests.models.conftest import LABELS, make_examples, tiny_config

from camim.errors import CamimError
from camim.models import build_model
from camim.optim import build_scheduler, warmup_steps_for
from camim.reports import read_run_logs
from camim.training.api import train_run
from camim.training.config import load_config
from camim.training.module import MRELightningModule
from camim.training.selection import DevCheckpoint

from .conftest import TINY

RELEASED_HVPNET = {
    "no_decay_split": False,
    "train_classifier": False,
    "train_vision_backbone": False,
    "selection_tie": "last",
    "warmup_unrounded": True,
}


@pytest.mark.parametrize("preset", ["hvpnet", "hvpnet-mi", "hvpnet-cam", "hvpnet-cam-mi"])
def test_hvpnet_presets_use_the_released_trainer(preset):
    o = load_config(preset).optim
    assert {k: getattr(o, k) for k in RELEASED_HVPNET} == RELEASED_HVPNET
    assert o.adam_bias_correction and o.adam_eps == 1e-8 and o.warmup_ratio == 0.1 and not o.bootstrap_train


@pytest.mark.parametrize("preset", ["tmr", "tmr-cam-mi", "bert", "offline-bert", "offline-tmr-cam-mi"])
def test_other_presets_keep_the_clean_defaults(preset):
    o = load_config(preset).optim
    assert (o.no_decay_split, o.train_classifier, o.train_vision_backbone) == (True, True, True)
    assert (o.selection_tie, o.warmup_unrounded) == ("first", False)


def one_step(text_dir, vision_dir, overrides: list[str]):
    """One AdamW step of a tiny HVPNeT in train mode -> (state before, state after, model, optimiser)."""
    torch.manual_seed(0)
    model = build_model(tiny_config(text_dir, vision_dir, name="hvpnet", image_size=64), LABELS)
    cfg = load_config("hvpnet", ["optim.lr=1e-3", *overrides])
    module = MRELightningModule(model, cfg, negative_id=0)
    module.setup("fit")
    optimizer = module.build_optimizer()
    batch = model.processor(make_examples(3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    model(batch).loss.backward()
    optimizer.step()
    return before, model.state_dict(), model, optimizer


def changed(before: dict, after: dict, prefix: str, kind: str = "param") -> dict[str, bool]:
    keys = [k for k in before if k.startswith(prefix) and (("running_" in k) == (kind == "bn"))]
    keys = [k for k in keys if "num_batches_tracked" not in k]
    assert keys, prefix
    return {k: not torch.equal(before[k], after[k]) for k in keys}


def test_released_hvpnet_step(text_dir, vision_dir):
    """bert, encoder_conv and gates change; the classifier and every ResNet weight stay bit-identical while
    the ResNet's BatchNorm running statistics move; one decay group, biases and LayerNorm included."""
    before, after, model, optimizer = one_step(text_dir, vision_dir, [])
    for prefix in ("bert.", "encoder_conv.", "gates."):
        assert all(changed(before, after, prefix).values()), prefix
    assert not any(changed(before, after, "classifier.").values())
    assert not any(changed(before, after, "resnet.").values())
    assert all(changed(before, after, "resnet.", "bn").values())  # BN statistics update in train mode
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01]
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert id(named["encoder_conv.0.bias"]) in in_optimizer
    assert id(named["bert.embeddings.LayerNorm.weight"]) in in_optimizer
    assert id(named["classifier.weight"]) not in in_optimizer and id(named["resnet.model.embedder.embedder.convolution.weight"]) not in in_optimizer  # fmt: skip


def test_clean_reading_trains_every_parameter(text_dir, vision_dir):
    clean = ["optim.no_decay_split=true", "optim.train_classifier=true", "optim.train_vision_backbone=true"]
    before, after, model, optimizer = one_step(text_dir, vision_dir, clean)
    assert all(changed(before, after, "classifier.").values())
    conv_weights = {k: v for k, v in changed(before, after, "resnet.").items() if "convolution" in k}
    assert all(conv_weights.values())
    assert sorted(g["weight_decay"] for g in optimizer.param_groups) == [0.0, 0.01]
    no_decay = [g for g in optimizer.param_groups if g["weight_decay"] == 0.0][0]["params"]
    assert any(p is dict(model.named_parameters())["encoder_conv.0.bias"] for p in no_decay)


class Snapshot(L.Callback):
    """The model's state at the start and at the end of the fit."""

    def on_fit_start(self, trainer, pl_module):
        self.start = {k: v.clone() for k, v in pl_module.model.state_dict().items()}

    def on_fit_end(self, trainer, pl_module):
        self.end = {k: v.clone() for k, v in pl_module.model.state_dict().items()}


def test_train_run_keeps_the_classifier_at_its_init(tiny_mnre, tmp_path):
    snap = Snapshot()
    options = ["optim.epochs=1", "optim.train_classifier=false", "optim.no_decay_split=false"]
    train_run("offline-bert", tiny_mnre, tmp_path / "run", overrides=[*TINY, *options], callbacks=[snap])
    assert not any(changed(snap.start, snap.end, "classifier.fc.").values())
    assert all(changed(snap.start, snap.end, "classifier.linear_final.").values())
    assert all(changed(snap.start, snap.end, "bert.encoder.").values())


@pytest.mark.parametrize("tie,best", [("first", 1), ("last", 3)])
def test_selection_tie_rule(tiny_mnre, tmp_path, tie, best):
    """An lr far too small to move a prediction gives equal dev F1 in every epoch: the released TMR rule (`>`)
    keeps epoch 1, the released HVPNeT rule (`>=`) epoch 3 (Lightning's own ModelCheckpoint keeps the first)."""
    out = tmp_path / tie
    options = ["optim.epochs=3", "optim.lr=1e-12", f"optim.selection_tie={tie}"]
    result = train_run("offline-bert", tiny_mnre, out, overrides=[*TINY, *options])
    f1 = [r["val/f1"] for r in read_run_logs(out / "logs") if "val/f1" in r]
    assert len(f1) == 3 and len(set(f1)) == 1  # a tie in every epoch
    assert result.metrics["best_epoch"] == best
    assert sorted(p.name for p in (out / "checkpoints").glob("best-*.ckpt")) == [f"best-epoch{best - 1}.ckpt"]


def test_dev_checkpoint_resume_state_key_and_arguments(tmp_path):
    kw = {"dirpath": str(tmp_path), "monitor": "val/f1", "mode": "max", "save_top_k": 1}
    assert DevCheckpoint(**kw, ties="last").state_key == ModelCheckpoint(**kw).state_key
    with pytest.raises(CamimError, match="ties must be one of"):
        DevCheckpoint(monitor="val/f1", ties="middle")


def test_resume_removes_the_best_checkpoint_a_killed_run_saved_after_its_last_one(tmp_path):
    """Killed between saving best-epoch1.ckpt (and removing best-epoch0.ckpt) and saving last.ckpt: the resumed
    state (last.ckpt's) knows best-epoch0 only; the orphan goes, so that redoing epoch 1 saves best-epoch1.ckpt
    again rather than best-epoch1-v1.ckpt beside it. Files of other names stay."""
    kw = {"dirpath": str(tmp_path), "filename": "best-epoch{epoch}", "monitor": "val/f1", "save_last": True,
          "auto_insert_metric_name": False}  # fmt: skip
    for name in ("best-epoch0.ckpt", "best-epoch1.ckpt", "best-epoch1-v1.ckpt", "last.ckpt", "notes.ckpt"):
        (tmp_path / name).write_bytes(b"x")
    best = str(tmp_path / "best-epoch0.ckpt")
    state = {"dirpath": str(tmp_path), "best_model_score": torch.tensor(50.0), "best_model_path": best,
             "best_k_models": {best: torch.tensor(50.0)}, "kth_best_model_path": best, "kth_value": torch.tensor(50.0),
             "last_model_path": str(tmp_path / "last.ckpt")}  # fmt: skip
    DevCheckpoint(**kw).load_state_dict(state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-epoch0.ckpt", "last.ckpt", "notes.ckpt"]


def test_warmup_by_ratio_unrounded():
    """Released HVPNeT: num_warmup_steps = warmup_ratio * total (a float): 0.06 * 55 = 3.3 steps."""
    assert warmup_steps_for(55, None, 0.06) == 3
    assert warmup_steps_for(55, None, 0.06, unrounded=True) == pytest.approx(3.3)
    assert warmup_steps_for(55, 300, None, unrounded=True) == 300

    def lrs(warmup: float) -> list[float]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = build_scheduler(opt, 55, warmup)
        out = []
        for _ in range(5):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    assert lrs(3) == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0, 51 / 52])
    assert lrs(3.3) == pytest.approx([0.0, 1 / 3.3, 2 / 3.3, 3 / 3.3, 51 / 51.7])


@pytest.mark.parametrize(
    "override,message",
    [
        (["optim.selection_tie=middle"], "optim.selection_tie: expected one of 'first', 'last'"),
        (["optim.warmup_unrounded=true"], "warmup_unrounded applies to optim.warmup_ratio"),
    ],
)
def test_option_errors_name_the_key(override, message):
    with pytest.raises(CamimError, match=message):
        load_config("tmr", override)
