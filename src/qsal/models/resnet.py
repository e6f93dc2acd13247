"""ResNets: ResNet-18 for 28 px (MedMNIST benchmark: 3x3 stem, no max-pool) and CIFAR ResNet-20.

Blocks use ``nn.ReLU`` modules and a plain ``out + shortcut`` so that ``torch.fx`` traces them and
the quantizer can place one observer per tensor.
"""

from __future__ import annotations

from torch import nn

from qsal.models.registry import register_model

__all__ = ["BasicBlock", "ResNet"]


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """Generic ResNet trunk: stem 3x3, stages of ``BasicBlock``, global average pool, linear head."""

    def __init__(self, widths: list[int], depths: list[int], num_classes: int, in_channels: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, in_planes = [], widths[0]
        for i, (w, d) in enumerate(zip(widths, depths)):
            for j in range(d):
                layers.append(BasicBlock(in_planes, w, stride=2 if (i > 0 and j == 0) else 1))
                in_planes = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.layers(self.stem(x)))))


@register_model("resnet18")
def resnet18(num_classes: int, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    """ResNet-18 as in the MedMNIST v2 benchmark for 28 px inputs (11.2 M parameters)."""
    return ResNet([64, 128, 256, 512], [2, 2, 2, 2], num_classes, in_channels)


@register_model("resnet20")
def resnet20(num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """CIFAR ResNet-20 (He et al. 2016, 16-32-64 widths, 1x1-conv shortcuts; 0.27 M parameters)."""
    return ResNet([16, 32, 64], [3, 3, 3], num_classes, in_channels)
