"""Volumetric bi-level routing attention (BRA).

Tokens are split into regions; each query region routes to the `topk` regions whose mean key is
most similar to its mean query, then every query token attends to all tokens of those regions.
A depthwise 5x5x5 convolution of the values (LePE) is added before the output projection.

Two behaviours, chosen by the configuration:
- published ("count" regions, no masking): the number of regions per axis is fixed, so the region
  size grows with the input; the grid must divide into the regions exactly (the published padding
  path is broken, so inputs it cannot handle are refused with a clear message).
- project default ("size" regions, masked padding): the region size is fixed, the grid is padded to
  a region multiple, padded tokens are excluded from region descriptors, routing and attention, and
  the output is cropped back exactly. Memory grows linearly with the number of tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_CHUNK_ELEMENTS = 2**25


class QKVLinear(nn.Module):
    """One linear layer producing queries (qk_dim), keys (qk_dim) and values (dim)."""

    def __init__(self, dim: int, qk_dim: int) -> None:
        super().__init__()
        self.qk_dim = qk_dim
        self.qkv = nn.Linear(dim, 2 * qk_dim + dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(..., dim) -> q (..., qk_dim), k (..., qk_dim), v (..., dim)."""
        qk_dim = self.qk_dim
        return self.qkv(x).split([qk_dim, qk_dim, x.shape[-1]], dim=-1)


class RoutingAttention(nn.Module):
    """Bi-level routing attention over a channels-last grid (N, X, Y, Z, C)."""

    def __init__(self, dim: int, qk_dim: int, num_heads: int, topk: int, *, region_mode: str,
                 n_regions: tuple[int, int, int], region_size: tuple[int, int, int],
                 scale_by_head_dim: bool, masked_padding: bool, lepe_kernel: int = 5) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.topk = topk
        self.region_mode = region_mode
        self.n_regions = tuple(n_regions)
        self.region_size = tuple(region_size)
        self.masked_padding = masked_padding
        self.routing_scale = qk_dim**-0.5
        self.scale = (qk_dim // num_heads) ** -0.5 if scale_by_head_dim else qk_dim**-0.5
        self.qkv = QKVLinear(dim, qk_dim)
        self.lepe = nn.Conv3d(dim, dim, lepe_kernel, padding=lepe_kernel // 2, groups=dim)
        self.wo = nn.Linear(dim, dim)

    def region_layout(self, grid: tuple[int, int, int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Regions per axis and region size (tokens) for a token grid, padding included."""
        if self.region_mode == "size":
            size = tuple(min(r, g) for r, g in zip(self.region_size, grid))
            counts = tuple(math.ceil(g / s) for g, s in zip(grid, size))
            return counts, size
        if not self.masked_padding and any(g % n for g, n in zip(grid, self.n_regions)):
            raise ValueError(
                f"The reference-compatible attention cannot split a {'x'.join(map(str, grid))} token grid into "
                f"{'x'.join(map(str, self.n_regions))} regions (the published padding is broken); use inputs "
                "whose X and Y are multiples of 128 and Z of 64, or the default configuration."
            )
        size = tuple(math.ceil(g / n) for g, n in zip(grid, self.n_regions))
        return self.n_regions, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, X, Y, Z, C) -> (N, X, Y, Z, C)."""
        n, *grid, channels = x.shape
        counts, size = self.region_layout(tuple(grid))
        padded = tuple(c * s for c, s in zip(counts, size))
        pads = [p - g for p, g in zip(padded, grid)]
        if any(pads):
            x = F.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        q, k, v = self.qkv(to_regions(x, counts, size))
        valid = None
        if any(pads):
            mask = torch.zeros(padded, dtype=torch.bool, device=x.device)
            mask[: grid[0], : grid[1], : grid[2]] = True
            valid = to_regions(mask[None, ..., None], counts, size)[0, ..., 0]
        out = self.attend(q, k, v, valid)
        out = from_regions(out, counts, size)[:, : grid[0], : grid[1], : grid[2]]
        v_grid = from_regions(v, counts, size)[:, : grid[0], : grid[1], : grid[2]]
        out = out + self.lepe(v_grid.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
        return self.wo(out)

    def route(self, q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """Top-k region indices (N, P, K) from mean queries and keys of each region (no gradient)."""
        q, k = q.detach(), k.detach()
        if valid is None:
            q_region, k_region = q.mean(2), k.mean(2)
        else:
            weights = valid[None, :, :, None].to(q.dtype)
            counts = weights.sum(2).clamp(min=1)
            q_region, k_region = (q * weights).sum(2) / counts, (k * weights).sum(2) / counts
        affinity = (q_region * self.routing_scale) @ k_region.transpose(-2, -1)
        if valid is not None:
            affinity = affinity.masked_fill(~valid.any(1)[None, None, :], float("-inf"))
        return torch.topk(affinity, k=min(self.topk, affinity.shape[-1]), dim=-1).indices

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """Attention of each region's tokens over its routed regions; (N, P, T, C) in and out."""
        n, regions, tokens, _ = q.shape
        index = self.route(q, k, valid)
        topk = index.shape[-1]
        heads = self.num_heads
        per_region = heads * tokens * topk * tokens
        chunk = max(1, ATTENTION_CHUNK_ELEMENTS // per_region)
        batch = torch.arange(n, device=q.device)[:, None, None]
        outputs = []
        for start in range(0, regions, chunk):
            part = index[:, start:start + chunk]
            count = part.shape[1]
            q_part = split_heads(q[:, start:start + chunk].reshape(n * count, tokens, -1), heads)
            k_part = split_heads(k[batch, part].reshape(n * count, topk * tokens, -1), heads)
            v_part = split_heads(v[batch, part].reshape(n * count, topk * tokens, -1), heads)
            mask = None
            if valid is not None:
                mask = valid[part].reshape(n * count, 1, 1, topk * tokens)
            out = F.scaled_dot_product_attention(q_part, k_part, v_part, attn_mask=mask, scale=self.scale)
            outputs.append(out.transpose(1, 2).reshape(n, count, tokens, -1))
        return torch.cat(outputs, dim=1)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, heads * c) -> (B, heads, T, c), head-major channels as in the published code."""
    b, t, c = x.shape
    return x.view(b, t, heads, c // heads).transpose(1, 2)


def to_regions(x: torch.Tensor, counts: tuple[int, ...], size: tuple[int, ...]) -> torch.Tensor:
    """(N, X, Y, Z, C) -> (N, P, T, C); regions ordered X-major, tokens within a region X-major."""
    n, _, _, _, c = x.shape
    (a, b, d), (r, s, t) = counts, size
    x = x.reshape(n, a, r, b, s, d, t, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(n, a * b * d, r * s * t, c)


def from_regions(x: torch.Tensor, counts: tuple[int, ...], size: tuple[int, ...]) -> torch.Tensor:
    """Inverse of `to_regions`: (N, P, T, C) -> (N, X, Y, Z, C)."""
    n, _, _, c = x.shape
    (a, b, d), (r, s, t) = counts, size
    x = x.reshape(n, a, b, d, r, s, t, c).permute(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(n, a * r, b * s, d * t, c)
