"""The fusion module (§3.3, Eq. 15-17) as released: TMR's fusion attentions, the pooled residual terms,
correlation gating and the shared final projection (reference §1.5).

    fine          = Σ_q tanh(att(linear_q_fine(O_F), linear_k_fine(H_text), linear_v_fine(H_text)))  # Eq. (15)
                    (G_F likewise, Eq. 16)
    full path     = fine + P(Σ_q O_F),  P = tanh with CAM, identity for TMR        (full_image_path)
    coarse        = Σ_m tanh(att(linear_q_coarse(o_m), linear_k_coarse(H_phr), linear_v_coarse(H_phr)))
    object path   = coarse + tanh(mean_m o_m) with CAM, + Σ_m o_m for TMR          (object_path)
    O_gated       = strong_ori · full path + weak_ori · object path                (gate; released: ori_final)
    O_final       = tanh(linear_extend_pic(O_gated)), G_final likewise (shared layer)

The attention keys are the main text encoder's states H_text (the paper's T_W), unmasked as released;
given masks, padded keys are masked and padded query rows dropped from the sums. With ``sum_pooling=False``
(the clean reading) the full-path sums are divided by the number of real positions.
"""

from __future__ import annotations

import torch
from torch import nn

from camim.models.cross_attention import SDPAttention, attend


def masked_sum(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Σ over dim 1 of (B, L, d), keeping only rows where ``mask`` (B, L) is 1 (None = all rows)."""
    if mask is None:
        return x.sum(dim=1)
    return (x * mask.to(x.dtype).unsqueeze(-1)).sum(dim=1)


class FusionModule(SDPAttention, nn.Module):
    """Fine (image-text) and coarse (object-phrase) fusion attentions plus the shared final projection."""

    def __init__(self, hidden: int, objects: bool = True):
        super().__init__()
        self.linear_q_fine = nn.Linear(hidden, hidden)
        self.linear_k_fine = nn.Linear(hidden, hidden)
        self.linear_v_fine = nn.Linear(hidden, hidden)
        if objects:
            self.linear_q_coarse = nn.Linear(hidden, hidden)
            self.linear_k_coarse = nn.Linear(hidden, hidden)
            self.linear_v_coarse = nn.Linear(hidden, hidden)
        self.linear_extend_pic = nn.Linear(hidden, hidden)

    def fine(
        self,
        queries: torch.Tensor,
        query_mask: torch.Tensor | None,
        text: torch.Tensor,
        text_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Eq. (15)/(16): Σ over query positions of tanh(CrossAtt(O_F, T_W)) -> (B, d)."""
        att = attend(
            self.linear_q_fine(queries),
            self.linear_k_fine(text),
            self.linear_v_fine(text),
            text_mask,
            self.sdpa_attention,
        )
        return masked_sum(torch.tanh(att), query_mask)

    def coarse(
        self, objects: torch.Tensor, phrase: torch.Tensor, phrase_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Object path: Σ over the m objects of tanh(CrossAtt(o_m, H_phr)) -> (B, d)."""
        att = attend(
            self.linear_q_coarse(objects),
            self.linear_k_coarse(phrase),
            self.linear_v_coarse(phrase),
            phrase_mask,
            self.sdpa_attention,
        )
        return torch.tanh(att).sum(dim=1)

    def full_image_path(
        self,
        X_F: torch.Tensor,
        mask: torch.Tensor | None,
        H_text: torch.Tensor,
        text_mask: torch.Tensor | None,
        sum_pooling: bool = True,
        tanh_pooled: bool = True,
    ) -> torch.Tensor:
        """fine + pooled for one full-image (or text-caption) stream X_F = O_F / G_F (B, L, d) -> (B, d).

        Released: Σ_q tanh(CrossAtt(X_F, H_text)) + tanh(Σ_q X_F) (CAMIM; ``tanh_pooled=False``: plain Σ_q X_F,
        TMR); ``sum_pooling=False`` divides both sums by the number of real query positions."""
        fine = self.fine(X_F, mask, H_text, text_mask)  # Eq. (15)/(16)
        pooled = masked_sum(X_F, mask)
        if not sum_pooling:  # clean reading: means over real positions, no saturation
            n = mask.sum(1, keepdim=True).clamp(min=1).to(X_F.dtype) if mask is not None else X_F.shape[1]
            fine, pooled = fine / n, pooled / n
        return fine + (torch.tanh(pooled) if tanh_pooled else pooled)

    def object_path(
        self, o: torch.Tensor, H_phr: torch.Tensor, phr_mask: torch.Tensor | None, cam: bool = True
    ) -> torch.Tensor:
        """coarse + pooled for the m object vectors o (B, m, d) -> (B, d).

        Pooled term: tanh(mean_m o_m) with CAM (CAMIM), Σ_m o_m without (TMR)."""
        pooled = torch.tanh(o.mean(dim=1)) if cam else o.sum(dim=1)
        return self.coarse(o, H_phr, phr_mask) + pooled

    def final(self, x: torch.Tensor) -> torch.Tensor:
        """O_final / G_final = tanh(linear_extend_pic(x)), one layer shared by both sides."""
        return torch.tanh(self.linear_extend_pic(x))


def gate(
    strong: torch.Tensor, full_path: torch.Tensor, weak: torch.Tensor, object_path: torch.Tensor
) -> torch.Tensor:
    """The released correlation gating: strong · (full-image path) + weak · (object path) -> (B, d).

    ``strong`` / ``weak`` (B,) are one side's columns of the scores [weak_ori, strong_ori, weak_dif, strong_dif]."""
    return strong[:, None] * full_path + weak[:, None] * object_path
