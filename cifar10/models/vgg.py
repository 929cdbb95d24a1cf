"""VGG-9 of the original zoo: conv3x3(+bias)-BN-ReLU layers with 2x2 max pools
(ceil mode), then fc = Linear-BN1d-ReLU to 256 units and a linear classifier."""
import torch
import torch.nn as nn

VGG9 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"]


class VGG(nn.Module):
    def __init__(self, cfg=VGG9, num_classes=10, input_size=32):
        super().__init__()
        layers, c_in, size = [], 3, input_size
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
                size = (size + 1) // 2
            else:
                layers += [nn.Conv2d(c_in, v, kernel_size=3, padding=1), nn.BatchNorm2d(v),
                           nn.ReLU(inplace=True)]
                c_in = v
        self.features = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(c_in * size * size, c_in), nn.BatchNorm1d(c_in),
                                nn.ReLU(inplace=True))
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fc(self.features(x).flatten(1)))


def vgg9() -> VGG:
    return VGG(VGG9)
