"""MNRE relation-extraction metrics as a torchmetrics ``Metric`` (DDP-safe: one summed confusion matrix).

Definitions follow the released code (OpenNRE ``SentenceREDataset.eval``, HVPNeT ``modules/metrics.py``;
reference-behaviour §2), with ``neg`` the negative label ("None" in MNRE):

- accuracy = correct / total, over all samples, the negative label included;
- micro precision = #(pred == gold != neg) / #(pred != neg);
- micro recall    = #(pred == gold != neg) / #(gold != neg);
- micro F1 = 2PR / (P + R), 0 when P + R = 0 (the released code's "0 on division error").

A wrong non-negative prediction for a non-negative gold therefore counts against both P and R (this equals
sklearn's micro-F1 with ``labels=[all but neg]``). Per-relation P/R/F1 are one-vs-rest from the same matrix.
All values are returned in percent.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if (p + r) > 0 else 0.0


def scores_from_confusion(confusion: torch.Tensor, negative_id: int | None) -> dict[str, float]:
    """Accuracy and micro P/R/F1 (percent) from a (C, C) confusion matrix with rows = gold, columns = predicted.

    ``negative_id=None`` (a label set without a negative label): every label counts, so P = R = accuracy.
    """
    cm = confusion.to(torch.float64)
    total = cm.sum().item()
    correct = torch.diagonal(cm).sum().item()
    correct_positive, pred_positive, gold_positive = correct, total, total
    if negative_id is not None:
        correct_positive -= cm[negative_id, negative_id].item()
        pred_positive -= cm[:, negative_id].sum().item()
        gold_positive -= cm[negative_id, :].sum().item()
    precision = _ratio(correct_positive, pred_positive)
    recall = _ratio(correct_positive, gold_positive)
    return {
        "accuracy": 100.0 * _ratio(correct, total),
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "f1": 100.0 * _f1(precision, recall),
    }


def per_relation_from_confusion(confusion: torch.Tensor, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """One-vs-rest precision/recall/F1 (percent) and support for every label (negative included)."""
    cm = confusion.to(torch.float64)
    out: dict[str, dict[str, float]] = {}
    for i, name in enumerate(names):
        tp = cm[i, i].item()
        p = _ratio(tp, cm[:, i].sum().item())
        r = _ratio(tp, cm[i, :].sum().item())
        out[name] = {
            "precision": 100.0 * p,
            "recall": 100.0 * r,
            "f1": 100.0 * _f1(p, r),
            "support": int(cm[i, :].sum().item()),
        }
    return out


class MREMetrics(Metric):
    """Accumulates a confusion matrix over (predictions, gold) and computes the MNRE scores from it.

    ``update(preds, target)`` takes class ids of shape (B,) or logits of shape (B, C) as ``preds``.
    ``compute()`` returns ``{"accuracy", "precision", "recall", "f1"}`` in percent;
    ``per_relation()`` and ``confusion`` give the details.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self, num_labels: int, negative_id: int | None = 0, label_names: Sequence[str] | None = None, **kwargs
    ):
        super().__init__(**kwargs)
        if negative_id is not None and not 0 <= negative_id < num_labels:
            raise ValueError(f"negative_id {negative_id} outside 0..{num_labels - 1}")
        if label_names is not None and len(label_names) != num_labels:
            raise ValueError(f"{len(label_names)} label names for {num_labels} labels")
        self.num_labels = num_labels
        self.negative_id = negative_id
        self.label_names = (
            list(label_names) if label_names is not None else [str(i) for i in range(num_labels)]
        )
        self.add_state(
            "confusion", default=torch.zeros(num_labels, num_labels, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if preds.dim() == 2:
            preds = preds.argmax(dim=-1)
        preds = preds.reshape(-1).long()
        target = target.reshape(-1).long()
        if preds.shape != target.shape:
            raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} differ")
        for ids, what in ((target, "gold"), (preds, "predicted")):
            if ids.numel() and (ids.min() < 0 or ids.max() >= self.num_labels):
                raise ValueError(f"{what} label outside 0..{self.num_labels - 1}")
        idx = target * self.num_labels + preds
        self.confusion += torch.bincount(idx, minlength=self.num_labels**2).reshape(self.num_labels, -1)

    def compute(self) -> dict[str, float]:
        return scores_from_confusion(self.confusion, self.negative_id)

    def confusion_matrix(self) -> torch.Tensor:
        """The (C, C) confusion matrix (rows gold, columns predicted), summed over processes under DDP."""
        with self.sync_context():
            return self.confusion.clone()

    def per_relation(self) -> dict[str, dict[str, float]]:
        """Per-label P/R/F1 (percent) and support from the accumulated (synchronised) confusion matrix."""
        return per_relation_from_confusion(self.confusion_matrix(), self.label_names)
