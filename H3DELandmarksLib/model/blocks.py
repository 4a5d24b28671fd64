"""Building blocks of H3DE-Net: the transformer block and the convolutional decoder pieces."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import RoutingAttention


class TransformerBlock(nn.Module):
    """x += DWConv3d(x); x += BRA(LN(x)); x += MLP(LN(x)) — on (N, C, X, Y, Z)."""

    def __init__(self, dim: int, mlp_ratio: float, attention: RoutingAttention) -> None:
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.pos_embed = nn.Conv3d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = attention
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.Identity(), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, X, Y, Z) -> (N, C, X, Y, Z)."""
        x = x + self.pos_embed(x)
        x = x.permute(0, 2, 3, 4, 1)
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x.permute(0, 4, 1, 2, 3)


def conv_norm_act(in_channels: int, out_channels: int) -> nn.Sequential:
    """Conv3d k3 (no bias) -> InstanceNorm3d -> LeakyReLU(0.01)."""
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.InstanceNorm3d(out_channels),
        nn.LeakyReLU(inplace=True),
    )


class DecoderBlock(nn.Module):
    """Trilinear upsampling to the skip's grid, concatenation, two conv-norm-activation layers."""

    def __init__(self, in_channels: int, out_channels: int, skip_channels: int) -> None:
        super().__init__()
        self.conv1 = conv_norm_act(in_channels + skip_channels, out_channels)
        self.conv2 = conv_norm_act(out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """(N, Cin, X, Y, Z), skip (N, Cskip, ~2X, ~2Y, ~2Z) -> (N, Cout, skip grid)."""
        if all(s == 2 * d for s, d in zip(skip.shape[2:], x.shape[2:])):
            x = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
        else:
            x = F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=False)
        return self.conv2(self.conv1(torch.cat([x, skip], dim=1)))
