"""The fused adaptive wing loss is the published formula; the foreground dilation is max pooling."""

import torch
import torch.nn.functional as F

from H3DELandmarksLib.training.losses import adaptive_wing_loss, foreground_weights


def published_adaptive_wing(prediction, target, weights, alpha=2.1, omega=14.0, epsilon=1.0, theta=0.5):
    """Wang et al.'s formula through autograd, foreground weighted by max pooling."""
    error = (prediction - target).abs()
    power = alpha - target
    ratio = theta / epsilon
    slope = omega / (1 + ratio**power) * power * ratio ** (power - 1) / epsilon
    offset = theta * slope - omega * torch.log1p(ratio**power)
    loss = torch.where(error < theta, omega * torch.log1p((error / epsilon) ** power), slope * error - offset)
    foreground = (target > 0.2).to(target.dtype).reshape(-1, 1, *target.shape[-3:])
    dilated = F.max_pool3d(foreground, kernel_size=3, stride=1, padding=1).reshape(target.shape)
    return (loss * (1 + 10 * dilated) * weights[..., None, None, None]).mean()


def heatmaps(generator, dtype=torch.float32):
    target = torch.zeros(2, 3, 9, 8, 10, dtype=dtype)
    target[:, :, 2:6, 3:7, 4:9] = torch.rand(2, 3, 4, 4, 5, generator=generator, dtype=dtype)
    prediction = target + torch.randn(target.shape, generator=generator, dtype=dtype) * 0.4
    return prediction, target


def test_loss_and_gradient_equal_the_published_formula():
    generator = torch.Generator().manual_seed(0)
    prediction, target = heatmaps(generator)
    weights = torch.rand(2, 3, generator=generator)
    ours = prediction.clone().requires_grad_(True)
    theirs = prediction.clone().requires_grad_(True)
    value = adaptive_wing_loss(ours, target, weights=weights)
    expected = published_adaptive_wing(theirs, target, weights)
    (value * 3).backward()
    (expected * 3).backward()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(ours.grad, theirs.grad)


def test_gradient_passes_gradcheck_in_double_precision():
    generator = torch.Generator().manual_seed(1)
    prediction, target = heatmaps(generator, torch.float64)
    prediction.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: adaptive_wing_loss(p, target), (prediction,))


def test_the_loss_without_gradient_is_the_same_value():
    generator = torch.Generator().manual_seed(2)
    prediction, target = heatmaps(generator)
    with torch.no_grad():
        value = adaptive_wing_loss(prediction, target)
    torch.testing.assert_close(value, published_adaptive_wing(prediction, target, torch.ones(2, 3)))


def test_foreground_dilation_equals_three_voxel_max_pooling():
    generator = torch.Generator().manual_seed(3)
    target = (torch.rand(2, 4, 7, 9, 6, generator=generator) > 0.93).float()
    pooled = F.max_pool3d(target.reshape(-1, 1, 7, 9, 6), 3, stride=1, padding=1).reshape(target.shape)
    torch.testing.assert_close(foreground_weights(target, 10.0), 1 + 10 * pooled)
