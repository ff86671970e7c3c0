"""Cross-view transformer (teacher only): exchanges information between the frames' feature
maps before the occupancy block. Each block runs windowed self-attention within every frame,
then windowed cross-attention from each frame to its neighbours in time (the previous and next
frame; the ends have one neighbour). Windows are `window` x `window` cells of the stride-16 map;
maps are padded to a multiple of the window. Uses torch's nn.MultiheadAttention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _to_windows(x: torch.Tensor, win: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(N, C, H, W) -> (N * nWin, win*win, C), padded size."""
    n, c, h, w = x.shape
    ph, pw = -h % win, -w % win
    x = F.pad(x, (0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    x = x.view(n, c, hp // win, win, wp // win, win).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(-1, win * win, c), (hp, wp)


def _from_windows(
    x: torch.Tensor, n: int, c: int, padded: tuple[int, int], hw: tuple[int, int], win: int
) -> torch.Tensor:
    hp, wp = padded
    x = x.view(n, hp // win, wp // win, win, win, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, hp, wp)
    return x[:, :, : hw[0], : hw[1]]


class CrossViewBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, dropout: float) -> None:
        super().__init__()
        self.window = window
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (B, K, C, h, w) -> same shape."""
        b, k, c, h, w = feats.shape
        tok, padded = _to_windows(feats.reshape(b * k, c, h, w), self.window)  # (B*K*nW, L, C)
        nw = tok.shape[0] // (b * k)
        t = self.norm1(tok)
        tok = tok + self.self_attn(t, t, t, need_weights=False)[0]
        if k > 1:
            t = self.norm2(tok).view(b, k, nw, -1, c)
            prev_idx = [max(i - 1, 0) if i > 0 else 1 for i in range(k)]
            next_idx = [min(i + 1, k - 1) if i < k - 1 else k - 2 for i in range(k)]
            keys = torch.cat([t[:, prev_idx], t[:, next_idx]], dim=3)  # (B, K, nW, 2L, C)
            q = t.reshape(b * k * nw, -1, c)
            kv = keys.reshape(b * k * nw, -1, c)
            tok = tok + self.cross_attn(q, kv, kv, need_weights=False)[0]
        tok = tok + self.ffn(self.norm3(tok))
        return _from_windows(tok, b * k, c, padded, (h, w), self.window).view(b, k, c, h, w)


class CrossViewTransformer(nn.Module):
    def __init__(self, dim: int, heads: int, blocks: int, window: int, dropout: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(CrossViewBlock(dim, heads, window, dropout) for _ in range(blocks))
        self.frame_embed = nn.Parameter(torch.zeros(1, 64, dim, 1, 1))  # which frame a map comes from

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (B, K, C, h, w) -> (B, K, C, h, w)."""
        x = feats + self.frame_embed[:, : feats.shape[1]]
        for block in self.blocks:
            x = block(x)
        return x
