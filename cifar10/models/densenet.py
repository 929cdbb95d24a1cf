"""DenseNet-121 for CIFAR (kuangliu style, as in the original zoo): a 3x3 stem of
2*growth channels, 4 dense stages of pre-activation bottlenecks (BN-ReLU-conv1x1 to
4*growth, BN-ReLU-conv3x3 to growth, output concatenated *before* the input), halving
transitions (BN-ReLU-conv1x1-avgpool2) between stages, then BN-ReLU-avgpool4-linear."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class DenseLayer(nn.Module):
    def __init__(self, c_in, growth):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, 4 * growth, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class Transition(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in)
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    def __init__(self, num_layers, growth=32, reduction=0.5, num_classes=10):
        super().__init__()
        c = 2 * growth
        self.conv1 = nn.Conv2d(3, c, kernel_size=3, padding=1, bias=False)
        for i, n in enumerate(num_layers):
            setattr(self, f"dense{i + 1}", nn.Sequential(*[DenseLayer(c + k * growth, growth)
                                                           for k in range(n)]))
            c += n * growth
            if i < len(num_layers) - 1:
                c_out = int(c * reduction)
                setattr(self, f"trans{i + 1}", Transition(c, c_out))
                c = c_out
        self.num_stages = len(num_layers)
        self.bn = nn.BatchNorm2d(c)
        self.linear = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        for i in range(1, self.num_stages):
            out = getattr(self, f"trans{i}")(getattr(self, f"dense{i}")(out))
        out = getattr(self, f"dense{self.num_stages}")(out)
        out = F.avg_pool2d(F.relu(self.bn(out)), 4)
        return self.linear(out.flatten(1))


def densenet121() -> DenseNet:
    return DenseNet([6, 12, 24, 16], growth=32)
