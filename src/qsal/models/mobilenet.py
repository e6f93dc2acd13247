"""``edge_mbv2``: a MobileNetV2-style net for 28-32 px images on edge CPUs (~0.1 M parameters).

Inverted residual blocks (1x1 expand, 3x3 depthwise, 1x1 project, linear bottleneck) with ReLU6,
which integer runtimes fuse into the convolution as a clip.
"""

from __future__ import annotations

from torch import nn

from qsal.models.registry import register_model

__all__ = ["InvertedResidual", "EdgeMobileNetV2"]


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.block = nn.Sequential(_conv_bn(cin, hidden, 1), _conv_bn(hidden, hidden, 3, stride, groups=hidden),
                                   _conv_bn(hidden, cout, 1, act=False))

    def forward(self, x):
        out = self.block(x)
        if self.use_residual:
            out = out + x
        return out


class EdgeMobileNetV2(nn.Module):
    # (expansion, out channels, repeats, first stride): a 28 px input ends at 7x7.
    SETTINGS = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 64, 2, 1))

    def __init__(self, num_classes: int, in_channels: int = 1):
        super().__init__()
        self.stem = _conv_bn(in_channels, 16, 3)
        blocks, cin = [], 16
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.head = _conv_bn(cin, 128, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x):
        return self.fc(self.drop(self.flatten(self.pool(self.head(self.blocks(self.stem(x)))))))


@register_model("edge_mbv2")
def edge_mbv2(num_classes: int, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    return EdgeMobileNetV2(num_classes, in_channels)
