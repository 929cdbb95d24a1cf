"""The model zoo matches the original loss-landscape code: identical state_dict keys,
shapes, order and dtypes for all 29 CIFAR-10 names, and the released ResNet-56
checkpoint loads and gives fixed, sensible logits."""
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import COMPAT
from cifar10.models import MODELS

KEYS_DIR = os.path.join(COMPAT, "model_keys")
ZOO = sorted(f[:-4] for f in os.listdir(KEYS_DIR) if f.endswith(".txt"))
CHECKPOINT = os.path.join(COMPAT, "resnet56_sgd_lr=0.1_bs=128_wd=0.0005_model_300.t7")


def test_zoo_names_are_the_original_29_plus_digits():
    assert len(ZOO) == 29
    assert set(MODELS) == set(ZOO) | {"digits_cnn", "digits_mlp"}


@pytest.mark.parametrize("name", ZOO)
def test_state_dict_matches_original(name):
    got = [f"{k}\t{tuple(v.shape)}\t{v.dtype}" for k, v in MODELS[name]().state_dict().items()]
    with open(os.path.join(KEYS_DIR, name + ".txt")) as f:
        expected = f.read().splitlines()
    assert got == expected


@pytest.mark.parametrize("name", ["vgg9", "resnet20", "resnet20_noshort", "resnet56_noshort"])
def test_small_cifar_models_forward(name):
    torch.manual_seed(0)
    net = MODELS[name]()
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name, n_params", [("digits_cnn", 10026), ("digits_mlp", 4810)])
def test_digits_models(name, n_params):
    net = MODELS[name]()
    assert sum(p.numel() for p in net.parameters()) == n_params
    out = net(torch.randn(4, 1, 8, 8))
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert has_bn == (name == "digits_cnn")


def _smooth_batch():
    """A fixed batch of smooth random images (upsampled 4x4 noise)."""
    g = torch.Generator().manual_seed(0)
    return F.interpolate(1.5 * torch.randn(16, 3, 4, 4, generator=g), size=32,
                         mode="bilinear", align_corners=False)


def test_released_resnet56_checkpoint():
    ckpt = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"acc", "epoch", "state_dict"} and len(ckpt["state_dict"]) == 287
    net = MODELS["resnet56"]()
    res = net.load_state_dict(ckpt["state_dict"], strict=False)
    assert res.unexpected_keys == []
    assert all(k.endswith("num_batches_tracked") for k in res.missing_keys)
    net.eval()
    x = _smooth_batch()
    with torch.no_grad():
        y1, y2 = net(x), net(x)
    assert torch.equal(y1, y2)
    assert len(set(y1.argmax(1).tolist())) > 1 and y1.std(0).min() > 0.3  # not degenerate
    # regression constants, computed once with this code and the released checkpoint
    assert y1.argmax(1).tolist() == [2, 2, 2, 2, 2, 2, 0, 0, 2, 2, 2, 2, 2, 2, 0, 2]
    expected = torch.tensor([[1.39201, -2.62581, 6.44183, -0.32990, 1.41001],
                             [2.25600, -0.54106, 5.28746, -1.66608, 0.79852]])
    assert torch.allclose(y1[:2, :5], expected, atol=1e-3)
