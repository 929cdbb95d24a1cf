"""ResNets of the original loss-landscape zoo.

Two families share one network class:
  * CIFAR ResNets (resnet20/32/44/50_16/56/110, wrn*): 3 stages of 16k/32k/64k channels,
    depth = 6n + 2, global 8x8 average pool;
  * ImageNet-style ResNets adapted to 32x32 inputs (resnet18..152): a 3x3 stem with 64
    channels, 4 stages of 64/128/256/512 (x4 for bottlenecks), 4x4 average pool.
``shortcut=False`` gives the ``_noshort`` variants: the block has no ``shortcut``
module at all, and a bottleneck without shortcut ends without a ReLU (as the original).
A block with a shortcut whose shape does not change keeps an empty ``shortcut``
Sequential (the identity), and a 1x1 conv + BN projection when it does.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def _conv_bn(c_in, c_out, k, stride=1):
    return (nn.Conv2d(c_in, c_out, kernel_size=k, stride=stride, padding=k // 2, bias=False),
            nn.BatchNorm2d(c_out))


def _projection(c_in, c_out, stride):
    if stride == 1 and c_in == c_out:
        return nn.Sequential()
    return nn.Sequential(*_conv_bn(c_in, c_out, 1, stride))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN (+ shortcut) - ReLU."""
    expansion = 1

    def __init__(self, c_in, planes, stride=1, shortcut=True):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(c_in, planes, 3, stride)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3)
        if shortcut:
            self.shortcut = _projection(c_in, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if hasattr(self, "shortcut"):
            out = out + self.shortcut(x)
        return F.relu(out)


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1(x4)-BN (+ shortcut - ReLU)."""
    expansion = 4

    def __init__(self, c_in, planes, stride=1, shortcut=True):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(c_in, planes, 1)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3, stride)
        self.conv3, self.bn3 = _conv_bn(planes, 4 * planes, 1)
        if shortcut:
            self.shortcut = _projection(c_in, 4 * planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if hasattr(self, "shortcut"):  # the original's no-shortcut bottleneck has no last ReLU
            out = F.relu(out + self.shortcut(x))
        return out


class ResNet(nn.Module):
    """Stem conv3x3-BN-ReLU, one stage per width (the first at stride 1, then stride 2),
    average pool over the final feature map, linear head."""

    def __init__(self, block, num_blocks, widths, shortcut=True, num_classes=10):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(3, widths[0], 3)
        c_in = widths[0]
        for i, (planes, n) in enumerate(zip(widths, num_blocks)):
            blocks = []
            for j in range(n):
                blocks.append(block(c_in, planes, 2 if (i > 0 and j == 0) else 1, shortcut))
                c_in = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(widths)
        self.pool = 32 >> (len(widths) - 1)  # 8 for CIFAR ResNets, 4 for ImageNet-style
        self.linear = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            out = getattr(self, f"layer{i + 1}")(out)
        out = F.avg_pool2d(out, self.pool)
        return self.linear(out.flatten(1))


def cifar_resnet(depth: int, width: int = 1, shortcut: bool = True) -> ResNet:
    """ResNet-<depth> for CIFAR (depth = 6n + 2), channels widened by ``width``."""
    n = (depth - 2) // 6
    return ResNet(BasicBlock, [n] * 3, [16 * width, 32 * width, 64 * width], shortcut)


IMAGENET_DEPTHS = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]),
                   50: (Bottleneck, [3, 4, 6, 3]), 101: (Bottleneck, [3, 4, 23, 3]),
                   152: (Bottleneck, [3, 8, 36, 3])}


def imagenet_resnet(depth: int, shortcut: bool = True) -> ResNet:
    """ResNet-18/34/50/101/152 with a CIFAR stem (kuangliu style)."""
    block, num_blocks = IMAGENET_DEPTHS[depth]
    return ResNet(block, num_blocks, [64, 128, 256, 512], shortcut)
