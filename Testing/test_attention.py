"""Routing attention: exactness against dense attention, masking of padded tokens, any size."""

import pytest
import torch
import torch.nn.functional as F

from H3DELandmarksLib.model import build_model
from H3DELandmarksLib.model.attention import RoutingAttention, to_regions
from H3DELandmarksLib.model.config import default_config


def dense_attention(module: RoutingAttention, x: torch.Tensor) -> torch.Tensor:
    """Plain multi-head attention of every token over every token, with the module's weights."""
    n, gx, gy, gz, c = x.shape
    q, k, v = module.qkv(x.reshape(n, -1, c))
    heads = module.num_heads

    def split(t):
        return t.reshape(n, t.shape[1], heads, -1).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v), scale=module.scale)
    out = out.transpose(1, 2).reshape(n, gx, gy, gz, c)
    lepe = module.lepe(v.reshape(n, gx, gy, gz, c).permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
    return module.wo(out + lepe)


@pytest.mark.parametrize("mode,grid", [("count", (8, 8, 4)), ("size", (8, 8, 4)), ("size", (7, 9, 5)),
                                       ("count", (6, 7, 3))])
def test_routing_with_all_regions_equals_dense_attention(mode, grid):
    torch.manual_seed(0)
    module = RoutingAttention(32, 32, 4, topk=10**6, region_mode=mode, n_regions=(4, 4, 2),
                              region_size=(4, 4, 2), scale_by_head_dim=mode == "size",
                              masked_padding=True).eval()
    x = torch.randn(2, *grid, 32)
    with torch.inference_mode():
        torch.testing.assert_close(module(x), dense_attention(module, x), atol=1e-5, rtol=0)


def test_routing_never_selects_regions_made_only_of_padding():
    torch.manual_seed(1)
    module = RoutingAttention(16, 16, 2, topk=3, region_mode="count", n_regions=(4, 4, 2),
                              region_size=(1, 1, 1), scale_by_head_dim=False, masked_padding=True).eval()
    x = torch.randn(1, 5, 5, 1, 16)
    counts, size = module.region_layout((5, 5, 1))
    padded = tuple(c * s for c, s in zip(counts, size))
    x_padded = torch.nn.functional.pad(x, (0, 0, 0, padded[2] - 1, 0, padded[1] - 5, 0, padded[0] - 5))
    mask = torch.zeros(padded, dtype=torch.bool)
    mask[:5, :5, :1] = True
    valid = to_regions(mask[None, ..., None], counts, size)[0, ..., 0]
    assert (~valid.any(1)).sum() > 3
    with torch.inference_mode():
        q, k, _ = module.qkv(to_regions(x_padded, counts, size))
        chosen = module.route(q, k, valid)
        out = module(x)
    assert valid.any(1)[chosen].all()
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_default_network_accepts_any_input_size():
    torch.manual_seed(2)
    config = default_config(5, embed_dims=(16, 32, 64, 128), qk_dims=(16, 32, 64, 128))
    net = build_model(config).eval()
    x = torch.randn(1, 1, 97, 131, 45)
    with torch.inference_mode():
        out = net(x)
    assert out.shape == (1, 5, 49, 66, 23)
    assert torch.isfinite(out).all()


def test_full_resolution_default_variant_crops_back_exactly():
    config = default_config(3, embed_dims=(16, 32, 64, 128), qk_dims=(16, 32, 64, 128),
                            decoder_dims=(64, 32, 16, 16, 8), skip_dims=(8, 8), output_stride=1)
    net = build_model(config).eval()
    with torch.inference_mode():
        out = net(torch.randn(1, 1, 33, 40, 19))
    assert out.shape == (1, 3, 33, 40, 19)


def test_proposal_head_on_odd_sizes():
    config = default_config(4, head="proposals", embed_dims=(16, 32, 64, 128), qk_dims=(16, 32, 64, 128))
    net = build_model(config).eval()
    with torch.inference_mode():
        out = net(torch.randn(1, 1, 50, 37, 29))
    assert out.shape == (1, 13, 10, 8, 4, 7)


def test_too_small_input_gets_a_clear_error():
    net = build_model(default_config(2, embed_dims=(16, 32, 64, 128), qk_dims=(16, 32, 64, 128))).eval()
    with pytest.raises(ValueError, match="more than 32 voxels"):
        with torch.inference_mode():
            net(torch.zeros(1, 1, 32, 32, 32))
    with torch.inference_mode():
        assert net(torch.zeros(1, 1, 33, 20, 16)).shape == (1, 2, 17, 10, 8)
