"""Data sets, loaded once into memory as tensors.

``--dataset digits`` (default): scikit-learn's bundled handwritten digits (1,797 real
    8x8 images, 10 classes; ships inside scikit-learn, nothing is downloaded). Fixed
    split: a permutation with seed 0, the first 1,437 images train, the last 360 test.
    Pixels are scaled to [0, 1], then standardized with the training set's pixel mean
    and standard deviation. Images are (N, 1, 8, 8).
``--dataset cifar10 --datapath DIR``: the standard CIFAR-10 python batches in
    DIR/cifar-10-batches-py (data_batch_1..5, test_batch), normalized with the original
    project's mean (125.3, 123.0, 113.9)/255 and std (63.0, 62.1, 66.7)/255 unless
    ``--raw_data``. ``--download`` fetches them through torchvision (needs a network).
``--dataset package.module:function``: your own data; ``function()`` returns
    ``(train, test)``, each an ``(images, labels)`` pair of tensors/arrays or a torch
    Dataset of ``(image, label)`` items.

``--max_samples K`` keeps the first K images of each split (a quick, deterministic
subset); ``--data_split N --split_idx I`` then keeps the I-th of N contiguous, disjoint
parts, which together cover the data.
"""
import importlib
import importlib.util
import os
import pickle
import sys
from dataclasses import dataclass

import numpy as np
import torch

from errors import UserError

CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
DIGITS_N_TRAIN = 1437
DEFAULT_DATAPATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar10", "data")


@dataclass
class Data:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    name: str
    num_classes: int

    def split(self, which):
        """(images, labels) of 'train' or 'test'."""
        return (self.train_x, self.train_y) if which == "train" else (self.test_x, self.test_y)


def add_data_args(parser):
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", default="digits",
                   help="digits (embedded default), cifar10, or package.module:function")
    g.add_argument("--datapath", default=DEFAULT_DATAPATH,
                   help="folder holding cifar-10-batches-py/ (default: cifar10/data)")
    g.add_argument("--raw_data", action="store_true", help="do not normalize the images")
    g.add_argument("--download", action="store_true",
                   help="download CIFAR-10 through torchvision if absent (needs a network)")
    g.add_argument("--data_split", type=int, default=1, help="split the data into N parts")
    g.add_argument("--split_idx", type=int, default=0, help="use part I of --data_split")
    g.add_argument("--max_samples", type=int, default=0,
                   help="use only the first K images of each split (0: all)")
    g.add_argument("--trainloader", default="",
                   help="a torch file {'x': images, 'y': labels} to use as the training set")
    g.add_argument("--testloader", default="",
                   help="a torch file {'x': images, 'y': labels} to use as the test set")
    return parser


def load_data(args):
    """Load the data set named by the arguments, subset and split as asked."""
    if args.data_split < 1 or not 0 <= args.split_idx < args.data_split:
        raise UserError(f"--split_idx must be in 0..{args.data_split - 1} for "
                        f"--data_split {args.data_split}")
    if args.max_samples < 0:
        raise UserError("--max_samples must be >= 0")
    name = args.dataset
    if name == "digits":
        data = _digits(args.raw_data)
    elif name == "cifar10":
        data = _cifar10(args.datapath, args.raw_data, args.download)
    elif ":" in name:
        data = _custom(name)
    else:
        raise UserError(f"unknown --dataset '{name}'; use digits, cifar10 or "
                        "package.module:function")
    if args.trainloader:
        data.train_x, data.train_y = _tensor_file(args.trainloader)
    if args.testloader:
        data.test_x, data.test_y = _tensor_file(args.testloader)
    data.train_x, data.train_y = select(data.train_x, data.train_y, args)
    data.test_x, data.test_y = select(data.test_x, data.test_y, args)
    return data


def select(x, y, args):
    """Apply --max_samples, then --data_split/--split_idx (contiguous, disjoint parts)."""
    if args.max_samples:
        x, y = x[:args.max_samples], y[:args.max_samples]
    if args.data_split > 1:
        part = np.array_split(np.arange(len(x)), args.data_split)[args.split_idx]
        lo, hi = (int(part[0]), int(part[-1]) + 1) if len(part) else (0, 0)
        x, y = x[lo:hi], y[lo:hi]
    return x, y


def data_settings(args, data):
    """What identifies the evaluation data in a surface file's settings."""
    return {"dataset": args.dataset, "raw_data": bool(args.raw_data),
            "data_split": args.data_split, "split_idx": args.split_idx,
            "max_samples": args.max_samples, "n_train": len(data.train_y),
            "n_test": len(data.test_y),
            "trainloader": os.path.basename(args.trainloader) if args.trainloader else "",
            "testloader": os.path.basename(args.testloader) if args.testloader else ""}


def _digits(raw):
    # The CSV inside scikit-learn that load_digits() reads; reading it directly saves
    # the 1.5 s import of sklearn.datasets at every start.
    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        raise UserError("--dataset digits needs scikit-learn: pip install scikit-learn")
    csv = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
    if os.path.isfile(csv):
        table = np.loadtxt(csv, delimiter=",")
        x, y = table[:, :-1].reshape(-1, 8, 8).astype(np.float32) / 16.0, table[:, -1].astype(np.int64)
    else:
        from sklearn.datasets import load_digits
        d = load_digits()
        x, y = d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)
    perm = np.random.RandomState(0).permutation(len(y))
    x, y = x[perm], y[perm]
    tr, te = slice(0, DIGITS_N_TRAIN), slice(DIGITS_N_TRAIN, None)
    if not raw:
        mean, std = x[tr].mean(), x[tr].std()
        x = (x - mean) / std
    x = torch.from_numpy(np.ascontiguousarray(x[:, None]))
    y = torch.from_numpy(y)
    return Data(x[tr], y[tr], x[te], y[te], "digits", 10)


def _cifar10(datapath, raw, download):
    folder = os.path.join(datapath, "cifar-10-batches-py")
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
    if missing and download:
        try:
            import torchvision
            torchvision.datasets.CIFAR10(root=datapath, train=True, download=True)
        except Exception as e:  # network errors come in many types
            raise UserError(f"--download could not fetch CIFAR-10 into {datapath}: {e}")
        missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise UserError(f"CIFAR-10 not found: {folder} lacks {', '.join(missing)}; extract "
                        "cifar-10-python.tar.gz so that the folder cifar-10-batches-py/ sits "
                        "in --datapath, or add --download to fetch it through torchvision "
                        "when this machine is online")
    parts = [_cifar_batch(os.path.join(folder, f)) for f in files]
    train_x = np.concatenate([p[0] for p in parts[:5]])
    train_y = np.concatenate([p[1] for p in parts[:5]])
    test_x, test_y = parts[5]

    def to_tensor(a):
        t = torch.from_numpy(a.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
        if not raw:
            t = (t - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
        return t.contiguous()

    return Data(to_tensor(train_x), torch.from_numpy(train_y), to_tensor(test_x),
                torch.from_numpy(test_y), "cifar10", 10)


def _cifar_batch(path):
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, EOFError, TypeError, ValueError) as e:
        raise UserError(f"{path} is not a CIFAR-10 python batch ({e}); re-extract "
                        "cifar-10-python.tar.gz")
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise UserError(f"{path} is not a CIFAR-10 python batch (data shape {data.shape})")
    return data, labels


def import_object(spec, what):
    """Import ``package.module:name`` (the module may sit in the working directory)."""
    mod_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(mod_name)
        return getattr(mod, attr)
    except (ImportError, AttributeError) as e:
        raise UserError(f"cannot import {what} '{spec}' ({e}); give it as "
                        "package.module:name importable from the working directory")


def _custom(spec):
    out = import_object(spec, "--dataset")()
    try:
        train, test = out
    except (TypeError, ValueError):
        raise UserError(f"--dataset {spec} must return (train, test)")
    tx, ty = _as_tensors(train, spec)
    vx, vy = _as_tensors(test, spec)
    num_classes = int(max(ty.max(), vy.max()).item()) + 1 if len(ty) else 0
    return Data(tx, ty, vx, vy, spec, num_classes)


def _as_tensors(part, spec):
    if isinstance(part, torch.utils.data.Dataset) and not isinstance(part, tuple):
        items = [part[i] for i in range(len(part))]
        x = torch.stack([torch.as_tensor(a) for a, _ in items])
        y = torch.as_tensor([int(b) for _, b in items])
    else:
        try:
            x, y = part
        except (TypeError, ValueError):
            raise UserError(f"--dataset {spec}: each split must be (images, labels) or a "
                            "torch Dataset")
        x, y = torch.as_tensor(x), torch.as_tensor(y)
    return x.float().contiguous(), y.long()


def _tensor_file(path):
    if not os.path.isfile(path):
        raise UserError(f"data file not found: {path}")
    d = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(d, dict) and "x" in d and "y" in d:
        return torch.as_tensor(d["x"]).float(), torch.as_tensor(d["y"]).long()
    if isinstance(d, (tuple, list)) and len(d) == 2:
        return torch.as_tensor(d[0]).float(), torch.as_tensor(d[1]).long()
    raise UserError(f"{path} must hold {{'x': images, 'y': labels}} saved with torch.save")
