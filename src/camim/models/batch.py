"""The tensor batch every extractor consumes, and the output every extractor returns.

Shapes: B = batch size, L = text length, Lc = caption length, Lp = phrase length, m = objects per image.
A modality the batch does not carry is ``None``; each model documents what it does without it.

Frozen-visual mode (``camim.speed``) carries an image modality as row ids of the feature table attached to
the model's vision backbone (``VisionBackbone.attach_features``) in the ``*_rows`` fields instead of pixels;
the pixel field is then ``None``. Padded object slots point at the table's all-zero-image row.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class MREBatch:
    input_ids: torch.Tensor  # (B, L) entity-marked text
    attention_mask: torch.Tensor  # (B, L)
    head_pos: torch.Tensor  # (B,) index of the head's opening marker
    tail_pos: torch.Tensor  # (B,) index of the tail's opening marker
    labels: torch.Tensor | None = None  # (B,)
    token_type_ids: torch.Tensor | None = None  # (B, L)
    caption_input_ids: torch.Tensor | None = None  # (B, Lc)
    caption_attention_mask: torch.Tensor | None = None  # (B, Lc)
    phrase_input_ids: torch.Tensor | None = None  # (B, Lp)
    phrase_attention_mask: torch.Tensor | None = None  # (B, Lp)
    image: torch.Tensor | None = None  # (B, 3, H, W) original image
    objects: torch.Tensor | None = None  # (B, m, 3, H, W) object crops of the original image
    objects_mask: torch.Tensor | None = None  # (B, m) 1 where a real crop is present
    generated_image: torch.Tensor | None = None  # (B, 3, H, W) translation image
    generated_objects: torch.Tensor | None = None  # (B, m, 3, H, W)
    generated_objects_mask: torch.Tensor | None = None  # (B, m)
    image_rows: torch.Tensor | None = None  # (B,) int64 feature-table rows standing for ``image``
    objects_rows: torch.Tensor | None = None  # (B, m) int64 rows standing for ``objects``
    generated_image_rows: torch.Tensor | None = None  # (B,) int64 rows standing for ``generated_image``
    generated_objects_rows: torch.Tensor | None = None  # (B, m) int64 rows standing for ``generated_objects``
    scores: torch.Tensor | None = None  # (B, 4) [weak_ori, strong_ori, weak_dif, strong_dif]
    index: torch.Tensor | None = None  # (B,) sample indices, for predictions files

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MREBatch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> MREBatch:
        """Page-locked copies (``DataLoader(pin_memory=True)`` calls this), for asynchronous GPU transfers."""
        return self._map(lambda t: t.pin_memory())

    def _map(self, fn) -> MREBatch:
        kwargs = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kwargs[f.name] = fn(v) if isinstance(v, torch.Tensor) else v
        return MREBatch(**kwargs)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class MREOutput:
    logits: torch.Tensor  # (B, num_labels)
    loss: torch.Tensor | None = None  # ce_loss + alpha * mi_loss when labels are given
    ce_loss: torch.Tensor | None = None
    mi_loss: torch.Tensor | None = None
    features: dict[str, torch.Tensor] | None = None  # named intermediate features (O_final, G_final, ...)
