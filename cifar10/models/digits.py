"""Small models for the embedded 8x8 digits data set (inputs (N, 1, 8, 8), 10 classes):
fast enough to train and to plot loss surfaces of on a laptop CPU."""
import torch.nn as nn


def digits_cnn(num_classes: int = 10) -> nn.Sequential:
    """conv3x3 1->16 -BN-ReLU, conv3x3 16->32 -BN-ReLU, maxpool 2, linear 512->10
    (10,026 parameters). Has BatchNorm, so it exercises the biasbn/states options."""
    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, kernel_size=3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, num_classes))


def digits_mlp(num_classes: int = 10) -> nn.Sequential:
    """64 -> 64 -> ReLU -> 10 multilayer perceptron without BatchNorm (4,810 parameters)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, num_classes))


def digits_mlp_wide(width: int = 512, depth: int = 2, num_classes: int = 10) -> nn.Sequential:
    """64 -> width -> width -> 10 with ReLUs (``depth`` hidden layers), no BatchNorm: the width
    series of the alignment benchmark (``--model cifar10.models.digits:mlp_w512``). The
    original's initialization (N(0, 1e-3) linears) suits a plain SGD poorly at this depth:
    train them with ``--optimizer adam``."""
    layers, c = [nn.Flatten()], 64
    for _ in range(depth):
        layers += [nn.Linear(c, width), nn.ReLU()]
        c = width
    return nn.Sequential(*layers, nn.Linear(c, num_classes))


def digits_cnn_wide(width: int = 4, num_classes: int = 10) -> nn.Sequential:
    """digits_cnn with ``width`` times the channels (16w, 32w), with BatchNorm."""
    a, b = 16 * width, 32 * width
    return nn.Sequential(
        nn.Conv2d(1, a, kernel_size=3, padding=1), nn.BatchNorm2d(a), nn.ReLU(),
        nn.Conv2d(a, b, kernel_size=3, padding=1), nn.BatchNorm2d(b), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(b * 4 * 4, num_classes))


def mlp_w32() -> nn.Sequential:
    return digits_mlp_wide(32)


def mlp_w128() -> nn.Sequential:
    return digits_mlp_wide(128)


def mlp_w512() -> nn.Sequential:
    return digits_mlp_wide(512)


def cnn_w1() -> nn.Sequential:
    return digits_cnn_wide(1)


def cnn_w4() -> nn.Sequential:
    return digits_cnn_wide(4)
