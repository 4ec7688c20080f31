"""The classifier (§3.4.1, Eq. 17-19) as released (reference §1.6): not a [CLS] head.

x       = [h_head ; h_tail ; phrase ; O_final ; G_final]        (B, 6d for TMR)
F_final = linear_final(Dropout(x))                               # Eq. (17): MLP_final, (B, 2d)
logits  = fc(Dropout(F_final))                                   # Eq. (18); CE is Eq. (19)
"""

from __future__ import annotations

import torch
from torch import nn


class RelationClassifier(nn.Module):
    """``linear_final`` + ``fc`` with dropout before each (released p = 0.5)."""

    def __init__(
        self, in_dim: int, rep_dim: int, num_labels: int, dropout: float = 0.5, input_dropout: bool = True
    ):
        super().__init__()
        self.input_dropout = nn.Dropout(dropout) if input_dropout else nn.Identity()
        self.linear_final = nn.Linear(in_dim, rep_dim)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(rep_dim, num_labels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, in_dim) -> (logits (B, C), F_final (B, rep_dim))."""
        f_final = self.linear_final(self.input_dropout(x))  # Eq. (17)
        return self.fc(self.dropout(f_final)), f_final  # Eq. (18)


def entity_states(states: torch.Tensor, head_pos: torch.Tensor, tail_pos: torch.Tensor) -> torch.Tensor:
    """[h at head marker ; h at tail marker] from (B, L, d) -> (B, 2d)."""
    rows = torch.arange(states.shape[0], device=states.device)
    return torch.cat([states[rows, head_pos], states[rows, tail_pos]], dim=-1)
