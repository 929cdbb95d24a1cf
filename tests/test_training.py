import pytest
"""cifar10/main.py trains, saves checkpoints in the original's format, resumes exactly,
corrupts labels as asked and fails with one-line errors."""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys

import torch
import torch.nn.functional as F

from conftest import COMPAT, REPO, assert_one_line_error, run_script
from cifar10.main import augment, build_parser, corrupt_labels, lr_at, name_save_folder
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
        ["log.out", "train_settings.json"] + [f"{k}_{e}.t7" for k in ("model", "opt_state") for e in (0, 1, 2)])
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
                                          "opt_state_1.t7", "train_settings.json", "trainloader.t7"]


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


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _same_checkpoint(a, b):
    """model_<e>.t7 and opt_state_<e>.t7 of two folders are equal, tensor for tensor."""
    ma, mb = _state(a["model"]), _state(b["model"])
    assert ma["epoch"] == mb["epoch"] and ma["acc"] == mb["acc"]
    assert ma["state_dict"].keys() == mb["state_dict"].keys()
    assert all(torch.equal(ma["state_dict"][k], mb["state_dict"][k]) for k in ma["state_dict"])
    oa, ob = _state(a["opt"])["optimizer"], _state(b["opt"])["optimizer"]
    assert oa["param_groups"] == ob["param_groups"] and oa["state"].keys() == ob["state"].keys()
    assert all(torch.equal(oa["state"][i]["momentum_buffer"], ob["state"][i]["momentum_buffer"])
               for i in oa["state"])


def _interrupt(cmd, env, signum, after_line):
    """Start ``cmd``, send ``signum`` once stdout shows a line starting with ``after_line``,
    return (returncode, stdout, stderr)."""
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = []
    for line in p.stdout:
        out.append(line)
        if line.startswith(after_line):
            p.send_signal(signum)
            break
    rest, err = p.communicate(timeout=300)
    return p.returncode, "".join(out) + rest, err


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_resumes_bit_identical(tmp_path, signum):
    """Ctrl-C (SIGINT) or SIGTERM in epoch 3 of 6: exit 128 + signal with one line that says
    how to resume, no traceback; the same command again resumes from the last checkpoint
    and ends with the checkpoints and log epochs of an uninterrupted run, tensor for tensor."""
    train = DIGITS + ["--epochs", "6", "--save_epoch", "2"]
    folder = "digits_cnn_sgd_lr=0.1_bs=32_wd=0.0005_save_epoch=2"
    run_script(train + ["--save", tmp_path / "whole"], check=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable] + train + ["--save", str(tmp_path / "cut")]
    code, out, err = _interrupt(cmd, env, signum, "e: 2 ")
    assert code == 128 + signum, (code, out, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"interrupted by {signal.Signals(signum).name} in epoch "), err
    resumed_from = int(re.search(r"resume from epoch (\d+) \(model_\d+\.t7 in ", lines[0]).group(1))
    assert resumed_from in (0, 1, 2)
    cut = tmp_path / "cut" / folder
    assert max(int(l["e:"]) for l in _log(cut)) < 6
    p = run_script(train + ["--save", tmp_path / "cut"], check=True)
    assert f"resuming after epoch {resumed_from} of 6" in p.stdout if resumed_from else True
    whole = tmp_path / "whole" / folder
    assert sorted(os.listdir(cut)) == sorted(os.listdir(whole))
    assert [int(l["e:"]) for l in _log(cut)] == [int(l["e:"]) for l in _log(whole)] == list(range(7))
    for e in (0, 1, 2, 4, 6):
        _same_checkpoint({"model": whole / f"model_{e}.t7", "opt": whole / f"opt_state_{e}.t7"},
                         {"model": cut / f"model_{e}.t7", "opt": cut / f"opt_state_{e}.t7"})
    # a finished run: the same command again has nothing to do and changes nothing
    before = {f: (cut / f).read_bytes() for f in os.listdir(cut)}
    p = run_script(train + ["--save", tmp_path / "cut"], check=True)
    assert "nothing to do" in p.stdout and "epoch 6" in p.stdout
    assert {f: (cut / f).read_bytes() for f in os.listdir(cut)} == before


@pytest.mark.slow
def test_folder_of_another_run_or_tool_is_refused(tmp_path, cifar_dir):
    """The paper recipe's folder holding the original's released model_300.t7 (not written by
    this script) is refused with one line, unchanged; so is a rerun with other settings
    (another seed) or other --epochs; --overwrite trains into it."""
    released = os.path.join(COMPAT, "resnet56_sgd_lr=0.1_bs=128_wd=0.0005_model_300.t7")
    folder = tmp_path / "resnet56_sgd_lr=0.1_bs=128_wd=0.0005"
    folder.mkdir()
    shutil.copy(released, folder / "model_300.t7")
    p = run_script(["cifar10/main.py", "--model", "resnet56", "--datapath", cifar_dir, "--save", tmp_path])
    line = assert_one_line_error(p)
    assert "did not write (model_300.t7" in line and "--overwrite" in line, line
    assert os.listdir(folder) == ["model_300.t7"]
    assert (folder / "model_300.t7").read_bytes() == open(released, "rb").read()

    run = DIGITS + ["--epochs", "1", "--save", tmp_path]
    digits = tmp_path / FOLDER
    digits.mkdir()
    (digits / "model_5.t7").write_bytes(b"someone else's")
    assert "did not write (model_5.t7" in assert_one_line_error(run_script(run))
    assert os.listdir(digits) == ["model_5.t7"]
    run_script(run + ["--overwrite"], check=True)
    assert {"model_0.t7", "model_1.t7", "train_settings.json", "log.out"} <= set(os.listdir(digits))
    before = {f: (digits / f).read_bytes() for f in os.listdir(digits)}
    line = assert_one_line_error(run_script(run + ["--rand_seed", "3"]))
    assert "other settings (rand_seed: file has 0, this run has 3)" in line, line
    line = assert_one_line_error(run_script(DIGITS + ["--epochs", "2", "--save", tmp_path]))
    assert "a run of 1 epochs" in line and "--epochs 1" in line, line
    assert {f: (digits / f).read_bytes() for f in os.listdir(digits)} == before


@pytest.mark.slow
def test_threads_flag(tmp_path):
    """--threads N sets the CPU threads; 0 (default) takes $OMP_NUM_THREADS, as plot_surface.py."""
    run = DIGITS + ["--epochs", "0", "--max_samples", "100"]
    p = run_script(run + ["--threads", "1", "--save", tmp_path / "a"], env={"OMP_NUM_THREADS": "2"}, check=True)
    assert "1 thread)" in p.stdout, p.stdout
    p = run_script(run + ["--save", tmp_path / "b"], env={"OMP_NUM_THREADS": "2"}, check=True)
    assert "2 threads)" in p.stdout, p.stdout
    assert "--threads must be >= 0" in assert_one_line_error(run_script(run + ["--threads", "-1"]))


def test_help_shows_every_default():
    """Every flag of --help says its default (the training flags exactly once)."""
    parser = build_parser()
    text = parser.format_help()
    entries = {e.split()[0].rstrip(","): " ".join(e.split()) for e in re.split(r"\n(?=  -)", text)[1:]}
    data = {a.option_strings[0] for g in parser._action_groups if g.title == "data" for a in g._group_actions}
    for action in parser._actions:
        if action.dest == "help":
            continue
        entry = entries[action.option_strings[0]]
        assert "default" in entry, entry
        if action.option_strings[0] not in data:
            assert entry.count("(default: ") == 1, entry
    for flag, default in (("--epochs", "300"), ("--save_epoch", "10"), ("--threads", "0"),
                          ("--rand_seed", "0"), ("--overwrite", "False")):
        assert f"(default: {default})" in entries[flag], entries[flag]


def test_custom_model_folder_name_has_no_colon():
    args = build_parser().parse_args(["--model", "mywork.nets:small", "--dataset", "mywork:data"])
    name = name_save_folder(args)
    assert ":" not in name and os.sep not in name
    assert name.startswith("mywork.nets_small_sgd_lr=0.1_bs=128_wd=0.0005") and "_dataset=mywork_data" in name
