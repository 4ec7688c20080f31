"""The cross-attention block of Fig. 3 (Eq. 7-11 / 12-14), exactly as released (reference §1.4).

Single head, width d. Visual tokens x (B, Lx, d), word tokens y (B, Ly, d); six Linear+Dropout projections:

    H_S^1 = SelfAtt(x)          = sm(c Qx Kxᵀ) Vx           # Eq. (7)-(8)
    H_S^2 = CrossAtt(x, y)      = sm(c Qx Kyᵀ) Vy           # Eq. (9)-(10)
    H_W^2 = CrossAtt(y, x)      = sm(c Qy Kxᵀ) Vx           # Eq. (10)
    H_W^1 = "SelfAtt(y)"        = sm(c Ky Qyᵀ) Vy           # Eq. (8), released with key and query swapped
    out   = ELU(Dropout(Linear([LN(H_S^1 + H_S^2) ; LN(H_W^1 + H_W^2)])))   # Eq. (11), sequence concat

LN is one parameter-free LayerNorm; no residual from the inputs. Released: no masks at all. With
``masked=True`` padded word keys are excluded from every softmax and the returned token mask marks the
padded word rows so that callers drop them from their sums.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _proj(d: int, p: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, d), nn.Dropout(p))


def sdpa_bias(key_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """The additive mask :func:`attend` gives ``F.scaled_dot_product_attention`` for ``key_mask`` (B, Lk), 0 on
    padding: (B, 1, 1, Lk) of ``dtype``, 0 on keys and a quarter of the dtype's lowest value on padding, its rows
    allocated 8-aligned (see :func:`attend`). None for None."""
    if key_mask is None:
        return None
    b, lk = key_mask.shape
    bias = torch.zeros(b, 1, 1, (lk + 7) // 8 * 8, dtype=dtype, device=key_mask.device)[..., :lk]
    return bias.masked_fill_(~key_mask.bool().view(b, 1, 1, lk), torch.finfo(dtype).min / 4)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    sdpa: bool = False,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(d)) v, single head; ``key_mask`` (B, Lk) with 0 on padding (None = unmasked).

    ``sdpa=True`` (``speed.sdpa`` through :class:`SDPAttention`): the same attention through
    ``F.scaled_dot_product_attention`` (one fused kernel on a GPU where a backend takes the width; equal to
    rounding). Padding gets a quarter of the dtype's lowest value added rather than -inf, so a row whose keys
    are all padding averages every key, as the released ``masked_fill`` does, instead of giving NaN or 0 (a
    quarter: the GPU's memory-efficient kernel scales scores by log2(e) after adding the mask, which would
    overflow the lowest value itself to -inf). The mask's rows are allocated 8-aligned (that kernel's bias
    alignment, which compiled code does not pad for) and sliced to the key length. ``bias``: that mask built
    beforehand with :func:`sdpa_bias` (a layer attending twice with one mask builds it once)."""
    if sdpa:
        mask = bias if bias is not None else sdpa_bias(key_mask, q.dtype)
        out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), attn_mask=mask)
        return out.squeeze(1)
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask.bool().unsqueeze(1), torch.finfo(scores.dtype).min)
    return torch.matmul(torch.softmax(scores, dim=-1), v)


class SDPAttention:
    """Mixin of the modules that call :func:`attend`: ``sdpa_attention`` (off: the released matmul-softmax,
    on: ``F.scaled_dot_product_attention``) is set by ``camim.speed.apply_fast_mode`` from ``speed.sdpa``."""

    sdpa_attention = False


class CrossAttentionLayer(SDPAttention, nn.Module):
    """The released ``crossAttentionLayer`` (parameter names kept for checkpoint mapping)."""

    def __init__(self, hidden: int, dropout: float = 0.3):
        super().__init__()
        self.linear_q, self.linear_k, self.linear_v = (
            _proj(hidden, dropout),
            _proj(hidden, dropout),
            _proj(hidden, dropout),
        )
        self.linear_q2, self.linear_k2, self.linear_v2 = (
            _proj(hidden, dropout),
            _proj(hidden, dropout),
            _proj(hidden, dropout),
        )
        self.layer_norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.merge_fr = nn.Sequential(nn.Linear(hidden, hidden), nn.Dropout(dropout), nn.ELU())

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        y_mask: torch.Tensor | None = None,
        x_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, Lx, d) visual, y (B, Ly, d) words -> (out (B, Lx+Ly, d), token mask (B, Lx+Ly)).

        Masks (B, L) with 0 on padding; None = attend everywhere (released). ``x_mask`` is only needed when
        x itself is padded (the text-caption mode, where x holds word states)."""
        qx, kx, vx = self.linear_q(x), self.linear_k(x), self.linear_v(x)
        qy, ky, vy = self.linear_q2(y), self.linear_k2(y), self.linear_v2(y)
        sdpa = self.sdpa_attention
        # each padding mask attends twice: its SDPA form is built once (all four queries share one dtype)
        xb, yb = (sdpa_bias(x_mask, qx.dtype), sdpa_bias(y_mask, qx.dtype)) if sdpa else (None, None)
        h_s1 = attend(qx, kx, vx, x_mask, sdpa, xb)  # Eq. (8) SelfAtt(O_S)
        h_s2 = attend(qx, ky, vy, y_mask, sdpa, yb)  # Eq. (10) CrossAtt(O_S, C_W)
        h_w2 = attend(qy, kx, vx, x_mask, sdpa, xb)  # Eq. (10) CrossAtt(C_W, O_S)
        h_w1 = attend(ky, qy, vy, y_mask, sdpa, yb)  # Eq. (8) SelfAtt(C_W), released K·Qᵀ swap
        z = torch.cat([self.layer_norm(h_s1 + h_s2), self.layer_norm(h_w1 + h_w2)], dim=1)
        out = self.merge_fr(z)  # Eq. (11) / (14)
        if x_mask is None:
            x_mask = torch.ones(x.shape[:2], dtype=torch.long, device=x.device)
        if y_mask is None:
            y_mask = torch.ones(y.shape[:2], dtype=torch.long, device=y.device)
        return out, torch.cat([x_mask.long(), y_mask.long()], dim=1)
