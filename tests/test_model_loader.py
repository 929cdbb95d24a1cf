"""model_loader.py: checkpoint formats, safe loading, clear errors, custom models."""
import os
import textwrap

import pytest
import torch

import model_loader
from conftest import COMPAT, assert_one_line_error, run_script
from errors import UserError

RELEASED = os.path.join(COMPAT, "resnet56_sgd_lr=0.1_bs=128_wd=0.0005_model_300.t7")


def test_released_legacy_checkpoint_loads_into_resnet56():
    sd = model_loader.load_state_dict(RELEASED)
    assert len(sd) == 287 and not any(k.endswith("num_batches_tracked") for k in sd)
    net = model_loader.load("resnet56", RELEASED)
    own = net.state_dict()
    assert all(torch.equal(own[k], v) for k, v in sd.items())
    assert not net.training


@pytest.mark.parametrize("form", ["original", "bare", "dataparallel"])
def test_checkpoint_forms(tmp_path, form):
    torch.manual_seed(1)
    src = model_loader.build_model("digits_cnn")
    sd = src.state_dict()
    obj = {"original": {"acc": 97.0, "epoch": 3, "state_dict": sd}, "bare": sd,
           "dataparallel": {"state_dict": {"module." + k: v for k, v in sd.items()}}}[form]
    path = str(tmp_path / "m.t7")
    torch.save(obj, path)
    net = model_loader.load("digits_cnn", path)
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(net(x), src.eval()(x))


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.slow
def test_code_in_checkpoint_is_refused(tmp_path):
    marker = str(tmp_path / "ran")
    path = str(tmp_path / "evil.t7")
    torch.save({"state_dict": {}, "payload": Evil(marker)}, path)
    with pytest.raises(UserError) as e:
        model_loader.load_state_dict(path)
    assert "--unsafe_load" in str(e.value)
    assert not os.path.exists(marker)
    line = assert_one_line_error(run_script(["plot_surface.py", "--model_file", path, "--no_progress"]))
    assert "--unsafe_load" in line and not os.path.exists(marker)


def test_checkpoint_that_does_not_fit_lists_keys(tmp_path):
    path = str(tmp_path / "mlp.t7")
    torch.save(model_loader.build_model("resnet20").state_dict(), path)
    with pytest.raises(UserError) as e:
        model_loader.load("digits_cnn", path)
    msg = str(e.value)
    assert "missing keys" in msg and "unexpected keys" in msg and "\n" not in msg
    wrong = model_loader.build_model("resnet20").state_dict()
    wrong["linear.weight"] = torch.zeros(5, 64)
    torch.save(wrong, path)
    with pytest.raises(UserError) as e:
        model_loader.load("resnet20", path)
    assert "shape mismatches: linear.weight" in str(e.value)


def test_custom_model_factory(tmp_path, monkeypatch):
    (tmp_path / "mymodel.py").write_text(textwrap.dedent("""
        import torch
        def tiny():
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        def not_a_model():
            return 3
    """))
    monkeypatch.chdir(tmp_path)
    assert isinstance(model_loader.build_model("mymodel:tiny"), torch.nn.Sequential)
    with pytest.raises(UserError):
        model_loader.build_model("mymodel:not_a_model")
    with pytest.raises(UserError) as e:
        model_loader.build_model("no_such_model")
    assert "resnet56" in str(e.value)


def test_check_fits_names_model_data_and_fix():
    from types import SimpleNamespace
    digits = SimpleNamespace(train_x=torch.randn(3, 1, 8, 8), test_x=torch.randn(2, 1, 8, 8),
                             name="digits", num_classes=10)
    cifar = SimpleNamespace(train_x=torch.randn(3, 3, 32, 32), test_x=torch.randn(2, 3, 32, 32),
                            name="cifar10", num_classes=10)
    net = model_loader.build_model("digits_mlp")
    model_loader.check_fits(net, digits)
    with pytest.raises(UserError) as e:
        model_loader.check_fits(model_loader.build_model("resnet20"), digits)
    assert str(e.value) == ("--model resnet20 expects 3-channel 32x32 images (CIFAR-10) but "
                            "--dataset digits gives 1x8x8; pass --dataset cifar10 or a digits "
                            "model (digits_cnn, digits_mlp)")
    with pytest.raises(UserError) as e:
        model_loader.check_fits(net, cifar)
    assert "expects 1-channel 8x8 images (digits)" in str(e.value)
    five = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5))
    with pytest.raises(UserError) as e:
        model_loader.check_fits(five, digits, "mine:five")
    assert "--model mine:five gives 5 outputs but --dataset digits has 10 classes" in str(e.value)
    net.train()
    model_loader.check_fits(net, digits)
    assert net.training  # the mode is restored


@pytest.mark.parametrize("name", ["empty", "text", "cut", "flip"])
def test_damaged_checkpoints_are_not_sent_to_unsafe_load(tmp_path, name):
    path = str(tmp_path / "m.t7")
    torch.save({"state_dict": model_loader.build_model("digits_mlp").state_dict()}, path)
    good = open(path, "rb").read()
    data = {"empty": b"", "text": b"not a checkpoint", "cut": good[:len(good) // 2],
            "flip": good[:200] + bytes(b ^ 0xFF for b in good[200:208]) + good[208:]}[name]
    bad = str(tmp_path / f"{name}.t7")
    with open(bad, "wb") as f:
        f.write(data)
    with pytest.raises(UserError) as e:
        model_loader.load_state_dict(bad)
    msg = str(e.value)
    assert "is damaged or not a PyTorch checkpoint" in msg and "--unsafe_load" not in msg, msg


def test_check_fits_tries_the_loss():
    from types import SimpleNamespace

    from evaluation import get_loss_fn
    digits = SimpleNamespace(train_x=torch.randn(3, 1, 8, 8), train_y=torch.tensor([1, 2, 3]),
                             test_x=torch.randn(2, 1, 8, 8), name="digits", num_classes=10)
    net = model_loader.build_model("digits_mlp")
    model_loader.check_fits(net, digits, loss_fn=get_loss_fn("crossentropy"))

    def raises(out, y):
        raise ValueError("loss broke")
    with pytest.raises(UserError) as e:
        model_loader.check_fits(net, digits, loss_fn=raises, loss_name="mine:raises")
    assert "--loss_name mine:raises raised ValueError: loss broke" in str(e.value)
    with pytest.raises(UserError) as e:
        model_loader.check_fits(net, digits, loss_fn=lambda out, y: out, loss_name="mine:raw")
    assert "it returned (2, 10)" in str(e.value)
