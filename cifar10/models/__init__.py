"""The model zoo: ``MODELS[name]()`` builds an ``nn.Module`` with 10 classes.

The 29 CIFAR-10 names (inputs (N, 3, 32, 32)) have exactly the state_dict keys, shapes
and order of the original loss-landscape code, so its checkpoints load unchanged; the
two digits models take (N, 1, 8, 8).
"""
from functools import partial

from .densenet import densenet121
from .digits import digits_cnn, digits_mlp
from .resnet import cifar_resnet, imagenet_resnet
from .vgg import vgg9

MODELS = {"vgg9": vgg9, "densenet121": densenet121}
for _d in (18, 34, 50, 101, 152):
    MODELS[f"resnet{_d}"] = partial(imagenet_resnet, _d)
    MODELS[f"resnet{_d}_noshort"] = partial(imagenet_resnet, _d, shortcut=False)
for _name, _depth, _short in [("resnet20", 20, True), ("resnet20_noshort", 20, False),
                              ("resnet32_noshort", 32, False), ("resnet44_noshort", 44, False),
                              ("resnet50_16_noshort", 50, False), ("resnet56", 56, True),
                              ("resnet56_noshort", 56, False), ("resnet110", 110, True),
                              ("resnet110_noshort", 110, False)]:
    MODELS[_name] = partial(cifar_resnet, _depth, shortcut=_short)
for _depth, _width, _short in [(56, 2, True), (56, 2, False), (56, 4, True), (56, 4, False),
                               (56, 8, True), (56, 8, False), (110, 2, False), (110, 4, False)]:
    MODELS[f"wrn{_depth}_{_width}" + ("" if _short else "_noshort")] = \
        partial(cifar_resnet, _depth, _width, shortcut=_short)
MODELS["digits_cnn"] = digits_cnn
MODELS["digits_mlp"] = digits_mlp
