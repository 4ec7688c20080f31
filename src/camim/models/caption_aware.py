"""The Caption-Aware Module (CAM, §3.2; Eq. 5-6, 11-14) as released (reference §1.3).

Given projected visual tokens P1 = MLP(F) (B, N, d) and a guide (sentence vector s (B, d), word states
W (B, Lw, d)) -- the caption (C_S, C_W) for the original side, the text (T_S, T_W) for the generated side:

    O_S = back(sentence([P1 ; s]))        # Eq. (5)/(6): sentence-level alignment, (B, N, d)
    O_F = CrossAttentionLayer(O_S, word(W))  # Eq. (7)-(11)/(12)-(14): word-level alignment, (B, N+Lw, d)

``level`` selects Fig. 4b's variants: "both" (released), "sentence" (O_F = O_S, N tokens) or "word"
(O_F = CrossAttentionLayer(P1, word(W))). One instance is shared by every stream (released).
"""

from __future__ import annotations

import torch
from torch import nn

from camim.models.cross_attention import CrossAttentionLayer


def _tanh_mlp(d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, 2 * d), nn.Tanh(), nn.Linear(2 * d, d))


class CaptionAwareModule(nn.Module):
    """Sentence- and word-level alignment of visual tokens with a caption/text guide."""

    def __init__(self, hidden: int, level: str = "both", dropout: float = 0.3):
        super().__init__()
        self.level = level
        if level in ("both", "sentence"):
            self.encoder_conv_sentence = nn.Sequential(nn.Linear(2 * hidden, hidden))
            self.encoder_conv_back = _tanh_mlp(hidden)
        if level in ("both", "word"):
            self.encoder_conv_word = _tanh_mlp(hidden)
            self.attention = CrossAttentionLayer(hidden, dropout)

    def forward(
        self,
        p1: torch.Tensor,
        s: torch.Tensor,
        w: torch.Tensor,
        w_mask: torch.Tensor | None = None,
        p_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """p1 (B, N, d), s (B, d), w (B, Lw, d) -> (features (B, N[+Lw], d), token mask (B, N[+Lw])).

        ``w_mask`` / ``p_mask`` (0 on padding) are used only in masked mode; None = attend everywhere."""
        o_s = p1
        if self.level in ("both", "sentence"):
            cat = torch.cat([p1, s.unsqueeze(1).expand(-1, p1.shape[1], -1)], dim=-1)  # Eq. (5)/(6)
            o_s = self.encoder_conv_back(self.encoder_conv_sentence(cat))
        if self.level == "sentence":
            if p_mask is not None:
                return o_s, p_mask.long()
            return o_s, torch.ones(o_s.shape[:2], dtype=torch.long, device=o_s.device)
        return self.attention(o_s, self.encoder_conv_word(w), w_mask, p_mask)  # Eq. (7)-(11) / (12)-(14)
