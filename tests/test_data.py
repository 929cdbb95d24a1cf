"""dataloader.py: the embedded digits, CIFAR-10 python batches, splits, custom data."""
import argparse
import os
import pickle
import textwrap

import numpy as np
import pytest
import torch

import dataloader
from conftest import write_cifar_batches
from errors import UserError


def args_for(*argv):
    return dataloader.add_data_args(argparse.ArgumentParser()).parse_args(list(argv))


@pytest.mark.slow
def test_digits_fixed_split_normalized():
    d = dataloader.load_data(args_for())
    assert d.train_x.shape == (1437, 1, 8, 8) and d.test_x.shape == (360, 1, 8, 8)
    assert d.train_x.dtype == torch.float32 and d.train_y.dtype == torch.int64
    assert abs(d.train_x.mean().item()) < 1e-5 and abs(d.train_x.std().item() - 1) < 1e-3
    assert sorted(set(d.train_y.tolist())) == list(range(10))
    again = dataloader.load_data(args_for())
    assert torch.equal(d.train_y, again.train_y) and torch.equal(d.test_x, again.test_x)
    # the same images as scikit-learn's loader, in the documented permutation
    from sklearn.datasets import load_digits
    ref = load_digits()
    perm = np.random.RandomState(0).permutation(1797)
    assert np.array_equal(d.test_y.numpy(), ref.target[perm][1437:])
    raw = dataloader.load_data(args_for("--raw_data"))
    assert np.allclose(raw.train_x.numpy()[:, 0], ref.images[perm][:1437] / 16.0)


def test_cifar_python_batches_round_trip(tmp_path):
    root = write_cifar_batches(str(tmp_path), n_train=50, n_test=20, seed=3)
    d = dataloader.load_data(args_for("--dataset", "cifar10", "--datapath", root))
    assert d.train_x.shape == (50, 3, 32, 32) and d.test_x.shape == (20, 3, 32, 32)
    with open(os.path.join(root, "cifar-10-batches-py", "data_batch_1"), "rb") as f:
        b = pickle.load(f, encoding="bytes")
    img = b[b"data"][0].reshape(3, 32, 32).astype(np.float32) / 255
    mean = np.array([125.3, 123.0, 113.9]).reshape(3, 1, 1) / 255
    std = np.array([63.0, 62.1, 66.7]).reshape(3, 1, 1) / 255
    np.testing.assert_allclose(d.train_x[0].numpy(), (img - mean) / std, rtol=1e-5, atol=1e-5)
    assert d.train_y[0].item() == b[b"labels"][0]
    raw = dataloader.load_data(args_for("--dataset", "cifar10", "--datapath", root, "--raw_data"))
    np.testing.assert_allclose(raw.train_x[0].numpy(), img, atol=1e-7)


def test_cifar_missing_says_where_and_download(tmp_path):
    with pytest.raises(UserError) as e:
        dataloader.load_data(args_for("--dataset", "cifar10", "--datapath", str(tmp_path)))
    assert "cifar-10-batches-py" in str(e.value) and "--download" in str(e.value)


def test_splits_are_disjoint_and_cover():
    full = dataloader.load_data(args_for())
    parts = [dataloader.load_data(args_for("--data_split", "3", "--split_idx", str(i))) for i in range(3)]
    assert sum(len(p.train_y) for p in parts) == len(full.train_y)
    assert torch.equal(torch.cat([p.train_x for p in parts]), full.train_x)
    assert not torch.equal(parts[0].train_x[:5], parts[1].train_x[:5])
    with pytest.raises(UserError):
        dataloader.load_data(args_for("--data_split", "3", "--split_idx", "3"))
    sub = dataloader.load_data(args_for("--max_samples", "100"))
    assert len(sub.train_y) == 100 and torch.equal(sub.train_x, full.train_x[:100])


def test_custom_data_function(tmp_path, monkeypatch):
    (tmp_path / "mydata.py").write_text(textwrap.dedent("""
        import torch
        from torch.utils.data import TensorDataset
        def tensors():
            g = torch.Generator().manual_seed(0)
            x = torch.randn(30, 2, generator=g)
            return (x, torch.arange(30) % 3), (x[:10], torch.arange(10) % 3)
        def datasets():
            (x, y), (a, b) = tensors()
            return TensorDataset(x, y), TensorDataset(a, b)
    """))
    monkeypatch.chdir(tmp_path)
    a = dataloader.load_data(args_for("--dataset", "mydata:tensors"))
    b = dataloader.load_data(args_for("--dataset", "mydata:datasets"))
    assert a.train_x.shape == (30, 2) and a.num_classes == 3
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    with pytest.raises(UserError):
        dataloader.load_data(args_for("--dataset", "mydata:nothing"))


def test_dataset_follows_the_model():
    r = dataloader.resolve_dataset
    assert r("", "vgg9") == r("", "resnet56") == r("", "densenet121") == "cifar10"
    assert r("", "digits_cnn") == r("", "digits_mlp") == r("", "mymodels:net") == "digits"
    assert r("", "") == "digits" and r("", "no_such_model") == "digits"  # fails at --model
    assert r("digits", "vgg9") == "digits" and r("cifar10", "digits_cnn") == "cifar10"
    args = dataloader.add_data_args(argparse.ArgumentParser()).parse_args([])
    assert args.dataset == ""


@pytest.mark.slow
def test_data_settings_identify_the_data_by_content(tmp_path):
    a, b = write_cifar_batches(str(tmp_path / "a")), write_cifar_batches(str(tmp_path / "b"))
    other = write_cifar_batches(str(tmp_path / "c"), seed=1)
    settings = lambda *argv: dataloader.data_settings(None, dataloader.load_data(  # noqa: E731
        args_for("--dataset", "cifar10", *argv)))
    same = settings("--datapath", a)
    assert same == settings("--datapath", b)  # the same data under another path
    assert same == settings("--datapath", a, "--max_samples", "300")  # = the whole set
    assert same != settings("--datapath", other)  # other data, same file names
    assert same != settings("--datapath", a, "--max_samples", "299")
    assert same != settings("--datapath", a, "--raw_data")
    assert same["data_hash"] and same["n_train"] == 300 and same["dataset"] == "cifar10"
    assert not any(str(tmp_path) in str(v) for v in same.values())
    # a --trainloader of the same name with other content is other data
    for sub, seed in (("x", 0), ("y", 1)):
        os.makedirs(tmp_path / sub)
        g = torch.Generator().manual_seed(seed)
        torch.save({"x": torch.randn(12, 3, 32, 32, generator=g), "y": torch.arange(12) % 10},
                   str(tmp_path / sub / "train.t7"))
    assert settings("--datapath", a, "--trainloader", str(tmp_path / "x" / "train.t7")) != \
        settings("--datapath", a, "--trainloader", str(tmp_path / "y" / "train.t7"))


def test_tensor_hash_sees_dtype_shape_and_bytes():
    x = torch.arange(12, dtype=torch.float32)
    h = dataloader.tensor_hash(x)
    assert h == dataloader.tensor_hash(x.clone()) and len(h) == 16
    assert h != dataloader.tensor_hash(x.view(3, 4))
    assert h != dataloader.tensor_hash(x.double())
    y = x.clone()
    y[5] += 1e-6
    assert h != dataloader.tensor_hash(y)
    assert dataloader.tensor_hash(x[::2]) == dataloader.tensor_hash(x[::2].contiguous())
    assert dataloader.tensor_hash(torch.zeros(0)) != dataloader.tensor_hash(torch.zeros(0, 2))


def test_importing_dataloader_imports_neither_torch_nor_numpy():
    import subprocess
    import sys
    code = ("import sys; import dataloader; "
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(dataloader.__file__),
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
