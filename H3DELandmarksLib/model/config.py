"""One configuration object for H3DE-Net and the named configurations.

``"reference"`` and ``"reference-proposals"`` reproduce the published BiFormer_Unet and
PBiFormer_Unet exactly (state-dict keys, shapes and numerics, quirks included). ``"default"`` is
the project's configuration: any input size (tokens padded to region multiples and masked out of
attention, exact crop back), a fixed region size so memory grows linearly with the volume, and a
lighter decoder that stops at half resolution.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import ModelPackageError

HEADS = ("heatmap", "proposals")
REGION_MODES = ("count", "size")


@dataclass(frozen=True)
class H3DEConfig:
    """Architecture of one H3DE-Net.

    Attributes:
        n_landmarks: number of landmarks (output classes).
        head: "heatmap" (anchor-free, one channel per landmark) or "proposals" (anchor-based).
        embed_dims: channels of the four encoder stages.
        qk_dims: query/key channels of the four stages.
        depths: blocks per stage.
        head_dim: channels per attention head (heads = qk_dim // head_dim).
        mlp_ratio: hidden width of the block MLP relative to the stage width.
        topks: regions each query region attends to, per stage.
        region_mode: "count" fixes the number of regions per axis (`n_regions`, the published
            behaviour: region size grows with the input); "size" fixes the region size in tokens
            (`region_size` at stage 0, halved per stage, at least 1).
        n_regions: regions per axis (X, Y, Z) when region_mode is "count".
        region_size: stage-0 region size in tokens (X, Y, Z) when region_mode is "size".
        scale_by_head_dim: attention temperature head_dim^-0.5 instead of the published qk_dim^-0.5.
        masked_padding: pad tokens to region multiples, mask pads out of routing and attention
            and crop back exactly; False reproduces the published (broken) padding.
        decoder_dims: output channels of up0, up1, up2 (quarter resolution), up3 (half
            resolution) and, when output_stride is 1, up4 (full resolution).
        skip_dims: channels of the raw-input skips c1 (half resolution) and c2 (full resolution,
            only when output_stride is 1).
        output_stride: 1 (heatmap at input resolution, published) or 2 (half resolution).
        n_anchors: anchors per cell of the proposal head.
        anchor_radii: anchor radii in quarter-resolution cells.
        legacy_modules: keep the modules the published code builds but never uses (BatchNorm
            `norm`, Linear `head`, and the heatmap decoder inside the proposal network) so that
            published state dicts load strictly.
    """

    n_landmarks: int = 14
    head: str = "heatmap"
    embed_dims: tuple[int, int, int, int] = (64, 128, 256, 512)
    qk_dims: tuple[int, int, int, int] = (64, 128, 256, 512)
    depths: tuple[int, int, int, int] = (2, 2, 4, 2)
    head_dim: int = 8
    mlp_ratio: float = 4.0
    topks: tuple[int, int, int, int] = (1, 4, 16, 16)
    region_mode: str = "count"
    n_regions: tuple[int, int, int] = (4, 4, 2)
    region_size: tuple[int, int, int] = (8, 8, 8)
    scale_by_head_dim: bool = False
    masked_padding: bool = False
    decoder_dims: tuple[int, ...] = (256, 128, 64, 32, 16)
    skip_dims: tuple[int, ...] = (32, 16)
    output_stride: int = 1
    n_anchors: int = 4
    anchor_radii: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25)
    legacy_modules: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.head not in HEADS:
            problems.append(f"head must be one of {HEADS}, not {self.head!r}")
        if self.region_mode not in REGION_MODES:
            problems.append(f"region_mode must be one of {REGION_MODES}, not {self.region_mode!r}")
        if self.output_stride not in (1, 2):
            problems.append("output_stride must be 1 or 2")
        if len(self.decoder_dims) != (5 if self.output_stride == 1 else 4):
            problems.append("decoder_dims needs 5 entries for output_stride 1 and 4 for output_stride 2")
        if len(self.skip_dims) != (2 if self.output_stride == 1 else 1):
            problems.append("skip_dims needs 2 entries for output_stride 1 and 1 for output_stride 2")
        if len(self.anchor_radii) != self.n_anchors:
            problems.append("anchor_radii needs one radius per anchor")
        for dim, qk_dim in zip(self.embed_dims, self.qk_dims):
            heads = qk_dim // self.head_dim if self.head_dim >= 1 else 0
            if not heads or qk_dim % self.head_dim or dim % heads:
                problems.append(f"stage width {dim} / qk dim {qk_dim} do not split into heads of {self.head_dim}")
        if self.n_landmarks < 1:
            problems.append("n_landmarks must be at least 1")
        if problems:
            raise ModelPackageError("Invalid H3DE-Net configuration: " + "; ".join(problems) + ".")

    @property
    def num_heads(self) -> tuple[int, ...]:
        """Attention heads per stage."""
        return tuple(qk // self.head_dim for qk in self.qk_dims)

    @property
    def approximate_parameters(self) -> int:
        """About how many weights the network has (the attention blocks' projections and MLPs and
        the stage and decoder convolutions; within a factor 2 of the exact count), computed
        without building it."""
        total, previous = 0.0, 1
        for dim, qk_dim, depth in zip(self.embed_dims, self.qk_dims, self.depths):
            block = dim * (2 * qk_dim + dim) + dim * dim + 2 * self.mlp_ratio * dim * dim + 27 * dim
            total += 27 * previous * dim + depth * block
            previous = dim
        for dim in self.decoder_dims:
            total += 27 * previous * dim
            previous = dim
        return int(total)

    def replace(self, **changes) -> "H3DEConfig":
        """Copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-ready dictionary (lists instead of tuples)."""
        data = dataclasses.asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}

    @classmethod
    def from_dict(cls, data: dict) -> "H3DEConfig":
        """Inverse of `to_dict`; unknown keys are an error naming the key."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ModelPackageError(f"Unknown H3DE-Net configuration keys: {', '.join(unknown)}.")
        values = {key: tuple(value) if isinstance(value, list) else value for key, value in data.items()}
        return cls(**values)


def reference_config(n_landmarks: int = 14, embed_dims=(64, 128, 256, 512), qk_dims=None,
                     head: str = "heatmap", **changes) -> H3DEConfig:
    """The published BiFormer_Unet (heatmap) or PBiFormer_Unet (proposals), any widths."""
    e0, e1, e2, _ = embed_dims
    return H3DEConfig(
        n_landmarks=n_landmarks,
        head=head,
        embed_dims=tuple(embed_dims),
        qk_dims=tuple(qk_dims or embed_dims),
        decoder_dims=(e2, e1, e0, e0 // 2, 16),
        skip_dims=(e0 // 2, 16),
        **changes,
    )


def default_config(n_landmarks: int = 14, head: str = "heatmap", **changes) -> H3DEConfig:
    """The project's configuration: any input size, linear memory, light half-resolution decoder."""
    settings = dict(
        n_landmarks=n_landmarks,
        head=head,
        region_mode="size",
        region_size=(8, 8, 8),
        scale_by_head_dim=True,
        masked_padding=True,
        decoder_dims=(128, 64, 32, 16),
        skip_dims=(16,),
        output_stride=2,
        legacy_modules=False,
    )
    settings.update(changes)
    return H3DEConfig(**settings)


NAMED_CONFIGS = {
    "reference": lambda n: reference_config(n),
    "reference-proposals": lambda n: reference_config(n, head="proposals"),
    "default": lambda n: default_config(n),
    "default-proposals": lambda n: default_config(n, head="proposals"),
}


def resolve_config(config_or_name: "H3DEConfig | str | dict", n_landmarks: int | None = None) -> H3DEConfig:
    """Turn a name, a dict or a config into a config, overriding the landmark count if given."""
    if isinstance(config_or_name, H3DEConfig):
        config = config_or_name
    elif isinstance(config_or_name, dict):
        config = H3DEConfig.from_dict(config_or_name)
    elif config_or_name in NAMED_CONFIGS:
        config = NAMED_CONFIGS[config_or_name](n_landmarks or 14)
    else:
        raise ModelPackageError(
            f"Unknown model configuration {config_or_name!r}; choose one of {', '.join(NAMED_CONFIGS)}."
        )
    if n_landmarks is not None and n_landmarks != config.n_landmarks:
        config = config.replace(n_landmarks=n_landmarks)
    return config
