"""The fusion module (§3.3, Eq. 15-17) as released: TMR's fusion attentions, correlation gating and the
shared final projection (reference §1.5).

    O_final-part  = Σ_q tanh(att(linear_q_fine(O_F), linear_k_fine(H_text), linear_v_fine(H_text)))  # Eq. (15)
    G_final-part  = the same with G_F                                                              # Eq. (16)
    objects       = Σ_m tanh(att(linear_q_coarse(o_m), linear_k_coarse(H_phr), linear_v_coarse(H_phr)))
    ori_final     = strong_ori (fine + pooled) + weak_ori (objects + pooled objects)
    O_final       = tanh(linear_extend_pic(ori_final)), G_final likewise (shared layer)

The attention keys are the main text encoder's states H_text (the paper's T_W), unmasked as released;
``masked=True`` masks padded keys and drops padded query rows from the sums.
"""

from __future__ import annotations

import torch
from torch import nn

from camim.models.cross_attention import attend


def masked_sum(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Σ over dim 1 of (B, L, d), keeping only rows where ``mask`` (B, L) is 1 (None = all rows)."""
    if mask is None:
        return x.sum(dim=1)
    return (x * mask.to(x.dtype).unsqueeze(-1)).sum(dim=1)


class FusionModule(nn.Module):
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
            self.linear_q_fine(queries), self.linear_k_fine(text), self.linear_v_fine(text), text_mask
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
        )
        return torch.tanh(att).sum(dim=1)

    def final(self, x: torch.Tensor) -> torch.Tensor:
        """O_final / G_final = tanh(linear_extend_pic(x)), one layer shared by both sides."""
        return torch.tanh(self.linear_extend_pic(x))
