import pytest
"""cifar10/main.py trains, saves checkpoints in the original's format, resumes exactly,
corrupts labels as asked and fails with one-line errors."""
import argparse
import os

import torch
import torch.nn.functional as F

from conftest import assert_one_line_error, run_script
from cifar10.main import augment, corrupt_labels, lr_at, name_save_folder
from cifar10.models import MODELS
import dataloader

DIGITS = ["cifar10/main.py", "--dataset", "digits", "--model", "digits_cnn", "--batch_size", "32",
          "--lr", "0.1"]
FOLDER = "digits_cnn_sgd_lr=0.1_bs=32_wd=0.0005"


def _log(folder):
    with open(os.path.join(folder, "log.out")) as f:
        return [dict(zip(l.split()[0::2], l.split()[1::2])) for l in f.read().splitlines()]


@pytest.mark.slow
def test_train_save_and_resume(tmp_path):
    # run from another working directory: the script finds the repository by itself
    root_a, root_b = tmp_path / "a", tmp_path / "b"
    script = os.path.join(os.path.dirname(os.path.dirname(__file__)), "cifar10", "main.py")
    run_script([script] + DIGITS[1:] + ["--epochs", "2", "--save", root_a], cwd=tmp_path, check=True)
    folder = root_a / FOLDER
    assert sorted(os.listdir(folder)) == sorted(
        ["log.out"] + [f"{k}_{e}.t7" for k in ("model", "opt_state") for e in (0, 1, 2)])
    log = _log(folder)
    assert [int(l["e:"]) for l in log] == [0, 1, 2]
    assert {"train_loss:", "train_acc:", "test_loss:", "test_acc:", "time:"} <= set(log[1])

    ckpt = torch.load(folder / "model_1.t7", map_location="cpu", weights_only=True)
    assert set(ckpt) == {"acc", "epoch", "state_dict"} and ckpt["epoch"] == 1
    assert abs(ckpt["acc"] - float(log[1]["test_acc:"])) < 1e-3 and ckpt["acc"] > 50
    net = MODELS["digits_cnn"]()
    net.load_state_dict(ckpt["state_dict"])  # strict: same keys and shapes
    opt = torch.load(folder / "opt_state_1.t7", map_location="cpu", weights_only=True)
    assert set(opt) == {"optimizer"} and opt["optimizer"]["param_groups"][0]["nesterov"]

    # resuming from epoch 1 reproduces the uninterrupted run's epoch 2 exactly
    run_script(DIGITS + ["--epochs", "2", "--save", root_b, "--resume_model", folder / "model_1.t7",
                         "--resume_opt", folder / "opt_state_1.t7"], check=True)
    assert [int(l["e:"]) for l in _log(root_b / FOLDER)] == [2]
    a = torch.load(folder / "model_2.t7", weights_only=True)["state_dict"]
    b = torch.load(root_b / FOLDER / "model_2.t7", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_label_corruption_changes_exact_fraction():
    y = dataloader.load_data(dataloader.add_data_args(argparse.ArgumentParser()).parse_args([])).train_y
    for prob in (0.0, 0.1, 0.5, 1.0):
        c = corrupt_labels(y, prob, 10, seed=3)
        assert (c != y).sum().item() == round(prob * len(y))
        assert c.min() >= 0 and c.max() <= 9
    assert torch.equal(corrupt_labels(y, 0.3, 10, 3), corrupt_labels(y, 0.3, 10, 3))
    assert not torch.equal(corrupt_labels(y, 0.3, 10, 3), corrupt_labels(y, 0.3, 10, 4))


@pytest.mark.slow
def test_cifar_run_with_corrupted_labels(tmp_path, cifar_dir):
    """A CIFAR-10 model on CIFAR-format data (augmented); the corrupted training set is
    saved for plot_surface.py --trainloader."""
    run_script(["cifar10/main.py", "--dataset", "cifar10", "--datapath", cifar_dir, "--model",
                "resnet20", "--epochs", "1", "--batch_size", "32", "--max_samples", "64",
                "--label_corrupt_prob", "0.25", "--save", tmp_path], check=True)
    folder = tmp_path / ("resnet20_sgd_lr=0.1_bs=32_wd=0.0005"
                         "_randlabel=0.25_max_samples=64")
    saved = torch.load(folder / "trainloader.t7", weights_only=True)
    args = dataloader.add_data_args(argparse.ArgumentParser()).parse_args(
        ["--dataset", "cifar10", "--datapath", cifar_dir, "--max_samples", "64"])
    clean = dataloader.load_data(args)
    assert torch.equal(saved["x"], clean.train_x)
    assert (saved["y"] != clean.train_y).sum().item() == 16
    assert sorted(os.listdir(folder)) == ["log.out", "model_0.t7", "model_1.t7", "opt_state_0.t7",
                                          "opt_state_1.t7", "trainloader.t7"]


def test_augment_crops_and_flips():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 32, 32)
    out = augment(x, g, fill=-0.7)  # pad value: black in normalized units
    padded = F.pad(x, (4, 4, 4, 4), value=-0.7)
    flips = 0
    for i in range(len(x)):
        windows = [padded[i, :, r:r + 32, c:c + 32] for r in range(9) for c in range(9)]
        plain = any(torch.allclose(out[i], w, atol=1e-6) for w in windows)
        flipped = any(torch.allclose(out[i].flip(2), w, atol=1e-6) for w in windows)
        assert plain or flipped
        flips += flipped and not plain
    assert 10 < flips < 54  # about half flipped


def test_lr_schedule_and_folder_names():
    args = argparse.Namespace(lr=0.1, lr_decay=0.1, epochs=300)
    assert [round(lr_at(e, args), 8) for e in (1, 150, 151, 225, 226, 275, 276, 300)] == \
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001]
    args.epochs = 20  # proportional: decays after epochs 10, 15, 18
    assert [round(lr_at(e, args), 8) for e in (10, 11, 15, 16, 18, 19)] == \
        [0.1, 0.01, 0.01, 0.001, 0.001, 0.0001]
    ns = dict(model="resnet56", optimizer="sgd", lr=0.1, lr_decay=0.1, batch_size=128,
              weight_decay=0.0005, momentum=0.9, save_epoch=10, loss_name="crossentropy",
              noaug=False, raw_data=False, label_corrupt_prob=0.0, ngpu=1, idx=0,
              dataset="cifar10", max_samples=0)
    # the README's paths: the original's released runs, trained with the defaults
    assert name_save_folder(argparse.Namespace(**ns)) == "resnet56_sgd_lr=0.1_bs=128_wd=0.0005"
    assert name_save_folder(argparse.Namespace(**{**ns, "dataset": ""})) == \
        "resnet56_sgd_lr=0.1_bs=128_wd=0.0005"
    assert name_save_folder(argparse.Namespace(**{**ns, "model": "vgg9", "weight_decay": 0.0,
                                                  "save_epoch": 1})) == \
        "vgg9_sgd_lr=0.1_bs=128_wd=0.0_save_epoch=1"
    ns.update(lr_decay=0.5, loss_name="mse", noaug=True, label_corrupt_prob=0.2, ngpu=2, idx=1,
              momentum=0.5, save_epoch=1, max_samples=500)
    assert name_save_folder(argparse.Namespace(**ns)) == (
        "resnet56_sgd_lr=0.1_lr_decay=0.5_bs=128_wd=0.0005_mom=0.5_save_epoch=1_loss=mse"
        "_noaug_randlabel=0.2_ngpu=2_idx=1_max_samples=500")


@pytest.mark.slow
def test_bad_input_one_line_errors(tmp_path):
    p = run_script(["cifar10/main.py", "--model", "no_such_net", "--save", tmp_path, "--epochs", "1"])
    assert "unknown --model 'no_such_net'" in assert_one_line_error(p)
    p = run_script(["cifar10/main.py", "--model", "resnet20", "--dataset", "digits", "--save",
                    tmp_path, "--epochs", "1"])
    assert "expects 3-channel 32x32 images" in assert_one_line_error(p)
    assert os.listdir(tmp_path) == []  # nothing written for a failed run
