"""The MNIST network of the saliency-guided-training paper (Ismail et al., NeurIPS 2021).

conv32-conv64-maxpool-dropout-fc128-fc, as in the PyTorch MNIST example the authors use.
"""

from __future__ import annotations

from torch import nn

from qsal.models.registry import register_model

__all__ = ["SmallCNN"]


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 1, image_size: int = 28):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.drop1 = nn.Dropout(0.25)
        self.flatten = nn.Flatten()
        side = (image_size - 4) // 2
        self.fc1 = nn.Linear(64 * side * side, 128)
        self.relu3 = nn.ReLU()
        self.drop2 = nn.Dropout(0.5)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x):
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        x = self.flatten(self.drop1(self.pool(x)))
        return self.fc2(self.drop2(self.relu3(self.fc1(x))))


@register_model("small_cnn")
def small_cnn(num_classes: int, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    return SmallCNN(num_classes, in_channels, image_size)
