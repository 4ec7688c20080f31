"""The mutual-information loss (§3.4.2, Eq. 20-23): InfoNCE with in-batch negatives.

Released (reference §1.7): x = O_final/||O_final||, y = G_final/||G_final|| (no eps), S = y xᵀ / τ with τ = 1,
loss = mean_i [logsumexp_j S_ij - S_ii], i.e. cross-entropy of each G row against its own O, positive kept
in the denominator, one direction. ``symmetric=True`` averages both directions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(
    anchor_target: torch.Tensor, anchor: torch.Tensor, temperature: float = 1.0, symmetric: bool = False
) -> torch.Tensor:
    """InfoNCE between paired rows of ``anchor_target`` (e.g. O_final) and ``anchor`` (e.g. G_final), (B, d).

    Rows of ``anchor`` predict their partner among all rows of ``anchor_target`` (Eq. 22: G_final
    "reversely predicts" O_final). Returns a scalar.
    """
    x = anchor_target / anchor_target.norm(dim=-1, keepdim=True)  # Eq. (20)
    y = anchor / anchor.norm(dim=-1, keepdim=True)  # Eq. (20)
    sim = y @ x.t() / temperature  # Eq. (21): log s(O_i, G_j)
    target = torch.arange(sim.shape[0], device=sim.device)
    loss = F.cross_entropy(sim, target)  # Eq. (22)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(sim.t(), target))
    return loss
