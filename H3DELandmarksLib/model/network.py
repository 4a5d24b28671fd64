"""H3DE-Net: CNN stem, four stages of routing-attention blocks, a U-Net decoder with the raw-input
skips, and either the anchor-free heatmap head or the anchor-based proposal head.

Axis convention: the input is (B, 1, X, Y, Z) with X, Y, Z the volume's i, j, k axes. An output
voxel o of a map at stride s corresponds to input voxel s * o.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import RoutingAttention
from .blocks import DecoderBlock, TransformerBlock, conv_norm_act
from .config import H3DEConfig


class H3DENet(nn.Module):
    """The whole network; state-dict keys follow the published implementation."""

    def __init__(self, config: H3DEConfig) -> None:
        super().__init__()
        self.config = config
        e = config.embed_dims
        self.downsample_layers = nn.ModuleList([
            nn.Sequential(
                nn.Conv3d(1, e[0] // 2, 3, stride=2, padding=1),
                nn.InstanceNorm3d(e[0] // 2),
                nn.GELU(),
                nn.Conv3d(e[0] // 2, e[0], 3, stride=2, padding=1),
                nn.InstanceNorm3d(e[0]),
            ),
            *[nn.Sequential(nn.Conv3d(e[i], e[i + 1], 3, stride=2, padding=1), nn.InstanceNorm3d(e[i + 1]))
              for i in range(3)],
        ])
        self.stages = nn.ModuleList([
            nn.Sequential(*[TransformerBlock(e[i], config.mlp_ratio, self._attention(i))
                            for _ in range(config.depths[i])])
            for i in range(4)
        ])
        for i in range(4):
            self.add_module(f"norm{i}", nn.LayerNorm(e[i]))
        d = config.decoder_dims
        self.up0 = DecoderBlock(e[3], d[0], e[2])
        self.up1 = DecoderBlock(d[0], d[1], e[1])
        self.up2 = DecoderBlock(d[1], d[2], e[0])
        heatmap_decoder = config.head == "heatmap" or config.legacy_modules
        if heatmap_decoder:
            self.up3 = DecoderBlock(d[2], d[3], config.skip_dims[0])
            self.c1 = conv_norm_act(1, config.skip_dims[0])
            self.avg_pool = nn.AvgPool3d(3, stride=2, padding=1)
            if config.output_stride == 1:
                self.up4 = DecoderBlock(d[3], d[4], config.skip_dims[1])
                self.c2 = conv_norm_act(1, config.skip_dims[1])
            self.final_conv = nn.Conv3d(d[-1], config.n_landmarks, 1)
        if config.legacy_modules:
            self.norm = nn.BatchNorm3d(e[3])
            self.head = nn.Linear(e[3], config.n_landmarks)
        if config.head == "proposals":
            if config.legacy_modules:
                self.early_down1 = nn.Conv3d(16, 64, 1, stride=4)
                self.early_down2 = nn.Conv3d(32, 64, 1, stride=2)
            self.pre_layer = nn.Conv3d(d[2], config.n_anchors * (3 + config.n_landmarks), 1)

    def _attention(self, stage: int) -> RoutingAttention:
        config = self.config
        scale = 2**stage
        region_size = tuple(max(1, r // scale) for r in config.region_size)
        return RoutingAttention(
            config.embed_dims[stage], config.qk_dims[stage], config.num_heads[stage], config.topks[stage],
            region_mode=config.region_mode, n_regions=config.n_regions, region_size=region_size,
            scale_by_head_dim=config.scale_by_head_dim, masked_padding=config.masked_padding,
        )

    @property
    def output_stride(self) -> int:
        """Stride of the output map relative to the input (4 for proposals)."""
        return 4 if self.config.head == "proposals" else self.config.output_stride

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features of the four stages at strides 4, 8, 16, 32, each (B, C_i, ...)."""
        features = []
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))
            x = getattr(self, f"norm{i}")(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
            features.append(x)
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, X, Y, Z) -> heatmaps (B, L, X/s, Y/s, Z/s) with s the output stride, or
        proposals (B, X/4, Y/4, Z/4, A, 3 + L): per cell and anchor 3 offsets and L class logits."""
        deepest = [-(-size // 32) for size in x.shape[2:]]
        if deepest[0] * deepest[1] * deepest[2] < 2:
            raise ValueError(f"H3DE-Net needs an input of more than 32 voxels along at least one axis, "
                             f"not {'x'.join(map(str, x.shape[2:]))} (its deepest stage normalises over the grid).")
        f0, f1, f2, f3 = self.encode(x)
        y = self.up2(self.up1(self.up0(f3, f2), f1), f0)
        if self.config.head == "proposals":
            out = self.pre_layer(y)
            b, _, gx, gy, gz = out.shape
            out = out.reshape(b, self.config.n_anchors, 3 + self.config.n_landmarks, gx, gy, gz)
            return out.permute(0, 3, 4, 5, 1, 2)
        y = self.up3(y, self.c1(self.avg_pool(x)))
        if self.config.output_stride == 1:
            y = self.up4(y, self.c2(x))
        return self.final_conv(y)
