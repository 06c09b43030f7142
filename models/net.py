"""The package classifier: a 5-conv CNN with a class head and a dimensions head (needs torch).

The first conv has stride 2 so that a whole-width ROI (partial packages sit at
the frame's edges) stays cheap; average- and max-pooled features together keep
both "how much of the view is package" (size) and "is there a corner" (shape).
"""

from __future__ import annotations

import torch
from torch import nn


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ShapeNet(nn.Module):
    """(N, C, H, W) → (class logits (N, K), normalised dimensions (N, 2))."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _block(in_channels, w, stride=2),
            nn.MaxPool2d(2),
            _block(w, 2 * w),
            nn.MaxPool2d(2),
            _block(2 * w, 4 * w),
            nn.MaxPool2d(2),
            _block(4 * w, 8 * w),
            _block(8 * w, 8 * w),
        )
        self.classifier = nn.Linear(16 * w, num_classes)
        self.dims = nn.Sequential(nn.Linear(16 * w, 64), nn.ReLU(inplace=True), nn.Linear(64, 2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return self.classifier(pooled), self.dims(pooled)


class ExportedShapeNet(nn.Module):
    """What ships: calibrated logits (divided by the fitted temperature) and dimensions in mm."""

    def __init__(self, net: ShapeNet, temperature: float, dims_mean: list[float], dims_std: list[float]):
        super().__init__()
        self.net = net
        self.register_buffer("inv_temperature", torch.tensor([1.0 / temperature], dtype=torch.float32))
        self.register_buffer("dims_mean", torch.tensor(dims_mean, dtype=torch.float32))
        self.register_buffer("dims_std", torch.tensor(dims_std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, dims = self.net(x)
        return logits * self.inv_temperature, dims * self.dims_std + self.dims_mean


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
