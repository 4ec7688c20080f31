"""``MRELightningModule``: what one training/evaluation step computes for any camim extractor.

The loop, devices, precision, DDP and checkpointing are Lightning's. The loss is the model's own
``MREOutput.loss`` (CE + alpha * InfoNCE, Eq. 23). Validation (model selection on dev micro-F1) starts at
``optim.eval_begin_epoch``; before it, ``val/f1`` is logged as -1 so that no checkpoint of those epochs can
be selected (the HVPNeT setting evaluates from epoch 8). The first batch of each epoch reseeds the global RNGs
from (seed, epoch) so that dropout after an end-of-epoch resume equals that of an uninterrupted run.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.seed import seed_everything

from camim.models.batch import MREBatch
from camim.optim import build_optimizer, build_scheduler, left_out, warmup_steps_for
from camim.speed.training import TrainingSpeed  # camim.speed's one entry point for training
from camim.training.config import RunConfig, epoch_seed
from camim.training.metrics import MREMetrics

NOT_EVALUATED = -1.0  # val/f1 logged for epochs before eval_begin_epoch


class MRELightningModule(L.LightningModule):
    """Wraps an extractor (``camim.models``) with its optimiser, schedule and MNRE metrics."""

    def __init__(self, model: torch.nn.Module, cfg: RunConfig, negative_id: int | None):
        super().__init__()
        self.model = model
        self.cfg = cfg
        names = list(model.labels)
        self.val_metrics = MREMetrics(len(names), negative_id, names)
        self.test_metrics = MREMetrics(len(names), negative_id, names)
        self.test_records: list[dict] = []
        self.eval_result: dict[str, Any] = {}
        self._skip_val = False
        self.speed = None  # camim.speed.training.TrainingSpeed (speed.fast / speed.frozen_visual)

    # ----------------------------------------------------------------- speed
    def setup(self, stage: str) -> None:
        if stage == "fit":
            # left out of the optimiser: they keep their values; without requires_grad no other gradient
            # changes and their backward pass is saved (the released HVPNeT computed and discarded it). Set
            # before the strategy wraps the model (DDP). BatchNorm statistics still update in train mode.
            for p in self.left_out_parameters():
                p.requires_grad_(False)
        sp = self.cfg.speed
        if (sp.fast or sp.frozen_visual) and self.speed is None:
            trainer = self._trainer
            dm = trainer.datamodule if trainer is not None else None
            self.speed = TrainingSpeed(
                sp,
                self.model,
                trainer.strategy.root_device if trainer is not None else torch.device("cpu"),
                feature_store=getattr(dm, "attach_feature_store", None),
                world_size=trainer.world_size if trainer is not None else 1,
                trainer_precision=self.cfg.trainer.precision,
            )

    def forward(self, batch: MREBatch):
        if self.speed is not None:
            return self.speed.forward(self.model, batch)
        return self.model(batch)

    def _owns_backward(self) -> bool:
        return self.speed is not None and self.speed.owns_backward

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        if self._owns_backward():
            return  # the speed step already ran backward (replayed from its CUDA graph)
        super().backward(loss, *args, **kwargs)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        if self._owns_backward():
            return  # each replay writes fresh gradients into the graph's buffers (never accumulates)
        super().optimizer_zero_grad(epoch, batch_idx, optimizer)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if isinstance(batch, MREBatch):
            return batch.to(device, non_blocking=batch.input_ids.is_pinned())
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    # ------------------------------------------------------------------ train
    def on_train_batch_start(self, batch: MREBatch, batch_idx: int) -> None:
        if batch_idx == 0:  # after the epoch's DataLoader iterator exists, on every path (fresh or resumed)
            seed_everything(epoch_seed(self.cfg.optim.seed, self.current_epoch), workers=True, verbose=False)

    def training_step(self, batch: MREBatch, batch_idx: int) -> torch.Tensor:
        out = self.speed.forward_backward(batch) if self._owns_backward() else self(batch)
        bs = len(batch)
        # prog_bar makes Lightning convert the step loss to a number after every batch (on a GPU a copy that
        # waits for the queue); speed.fast runs show it through camim.training.progress every N batches instead
        in_bar = self.speed is None or self.speed.step is None
        self.log("train/loss", out.loss, on_step=True, on_epoch=True, prog_bar=in_bar, batch_size=bs)
        self.log("train/ce_loss", out.ce_loss, on_step=True, on_epoch=True, batch_size=bs)
        if out.mi_loss is not None:
            self.log("train/mi_loss", out.mi_loss, on_step=True, on_epoch=True, batch_size=bs)
        # a host tensor: a float would become a tensor on the GPU each step, a copy that waits for the GPU
        lr = torch.tensor(self.optimizers().param_groups[0]["lr"], dtype=torch.float32)
        self.log("train/lr", lr, on_step=True, on_epoch=False, batch_size=bs)
        return out.loss

    # ------------------------------------------------------------- validate
    def on_validation_epoch_start(self) -> None:
        fitting = self.trainer.state.fn == "fit"
        self._skip_val = fitting and self.current_epoch + 1 < self.cfg.optim.eval_begin_epoch
        self.val_metrics.reset()

    def validation_step(self, batch: MREBatch, batch_idx: int) -> None:
        if self._skip_val:
            return
        out = self(batch)
        self.val_metrics.update(out.logits, batch.labels)
        self.log("val/loss", out.loss, on_epoch=True, batch_size=len(batch), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self._skip_val:
            self.log("val/f1", NOT_EVALUATED, prog_bar=True)
            return
        scores = self.val_metrics.compute()
        for k, v in scores.items():
            self.log(f"val/{k}", v, prog_bar=k == "f1")
        if self.trainer.state.fn != "fit":
            self.eval_result = {
                **scores,
                "per_relation": self.val_metrics.per_relation(),
                "confusion": self.val_metrics.confusion_matrix().tolist(),
            }

    # ------------------------------------------------------------------ test
    def on_test_epoch_start(self) -> None:
        self.test_metrics.reset()
        self.test_records = []

    def test_step(self, batch: MREBatch, batch_idx: int) -> None:
        out = self(batch)
        self.test_metrics.update(out.logits, batch.labels)
        probs = torch.softmax(out.logits.float(), dim=-1).cpu()
        preds = probs.argmax(-1).tolist()
        labels = batch.labels.tolist() if batch.labels is not None else [None] * len(preds)
        index = batch.index.tolist() if batch.index is not None else [None] * len(preds)
        for i in range(len(preds)):
            self.test_records.append(
                {"index": index[i], "gold": labels[i], "pred": preds[i], "probs": probs[i]}
            )

    def on_test_epoch_end(self) -> None:
        scores = self.test_metrics.compute()
        for k, v in scores.items():
            self.log(f"test/{k}", v)
        self.eval_result = {
            **scores,
            "per_relation": self.test_metrics.per_relation(),
            "confusion": self.test_metrics.confusion_matrix().tolist(),
        }

    # ------------------------------------------------------------- optimise
    def left_out_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters kept out of the optimiser (released HVPNeT: classifier Linear, ResNet; docs/training.md)."""
        o = self.cfg.optim
        return left_out(self.model, o.train_classifier, o.train_vision_backbone)

    def build_optimizer(self) -> torch.optim.Optimizer:
        """AdamW as ``cfg.optim`` says (groups, decay split, parameters left out; docs/training.md)."""
        o = self.cfg.optim
        common = {
            "lr": o.lr,
            "weight_decay": o.weight_decay,
            "adam_eps": o.adam_eps,
            "betas": tuple(o.adam_betas),
            "adam_bias_correction": o.adam_bias_correction,
            "no_decay_split": o.no_decay_split,
            "exclude": self.left_out_parameters(),
        }
        fast = self.speed is not None and self.speed.step is not None
        multi_tensor = self.speed.fused_optimizer if fast else o.multi_tensor
        return build_optimizer(self.model, multi_tensor=multi_tensor, **common)

    def configure_optimizers(self):
        o = self.cfg.optim
        optimizer = self.build_optimizer()
        total = int(self.trainer.estimated_stepping_batches)
        warmup = warmup_steps_for(total, o.warmup_steps, o.warmup_ratio, o.warmup_unrounded)
        scheduler = build_scheduler(optimizer, total, warmup)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
