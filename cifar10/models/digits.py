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
