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
from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from errors import UserError
from errors import first_line as _first_line
from plugins import call_user, import_object

if TYPE_CHECKING:  # torch and numpy are imported where used: --help stays instant
    import torch

CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
DIGITS_N_TRAIN = 1437
DEFAULT_DATAPATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar10", "data")
DATASETS = ("digits", "cifar10")


@dataclass
class Data:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    name: str
    num_classes: int
    kind: str = "images"  # "tokens": windows of token ids, labelled by themselves (lm.py)

    def split(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of 'train' or 'test'."""
        return (self.train_x, self.train_y) if which == "train" else (self.test_x, self.test_y)


def add_data_args(parser: Any) -> Any:
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", default="",
                   help="digits (scikit-learn's embedded images), cifar10, "
                        "package.module:function, or for --model hf:DIR text:PATH (a UTF-8 file "
                        "or folder), tokens:FILE (.npy/.bin token ids) or pydoc (the prose of the "
                        "standard library's pydoc_data); default: the one the model is made for "
                        "(the CIFAR zoo: cifar10; digits_* and package.module:factory "
                        "models: digits)%(default)s")  # '' (no '(default: )' suffix)
    g.add_argument("--datapath", default=DEFAULT_DATAPATH,
                   help="folder holding cifar-10-batches-py/ (default: cifar10/data)")
    g.add_argument("--raw_data", action="store_true", help="do not normalize the images")
    g.add_argument("--download", action="store_true",
                   help="download CIFAR-10 through torchvision if absent (needs a network)")
    g.add_argument("--data_split", type=int, default=1, help="split the data into N parts")
    g.add_argument("--split_idx", type=int, default=0, help="use part I of --data_split")
    g.add_argument("--max_samples", type=int, default=0,
                   help="use only the first K images of each split (0: all)")
    g.add_argument("--seq_len", type=int, default=0,
                   help="text:/tokens: data: tokens per window (0: min(256, the model's context))")
    g.add_argument("--max_tokens", type=int, default=0,
                   help="text:/tokens: data: use only the first N tokens of each split (0: all)")
    g.add_argument("--trainloader", default="",
                   help="a torch file {'x': images, 'y': labels} to use as the training set")
    g.add_argument("--testloader", default="",
                   help="a torch file {'x': images, 'y': labels} to use as the test set")
    return parser


def resolve_dataset(dataset: str, model: str) -> str:
    """The data set to use: ``dataset`` if given, else the one ``model`` is made for.

    The CIFAR zoo (every model of cifar10/models except digits_*) means cifar10, as in
    the original code; digits_* and custom ``package.module:factory`` models mean digits.
    """
    if dataset:
        return dataset
    model = model or ""
    if model.startswith("hf:"):
        raise UserError(f"--model {model} is a language model: give --dataset text:PATH, tokens:FILE or pydoc")
    if ":" in model or model.startswith("digits_") or not model:
        return "digits"
    from cifar10.models import MODELS
    return "cifar10" if model in MODELS else "digits"  # an unknown name fails at --model


def load_data(args: Any) -> Data:
    """Load the data set named by the arguments, subset and split as asked."""
    if args.data_split < 1 or not 0 <= args.split_idx < args.data_split:
        raise UserError(f"--split_idx must be in 0..{args.data_split - 1} for "
                        f"--data_split {args.data_split}")
    if args.max_samples < 0:
        raise UserError("--max_samples must be >= 0")
    name = resolve_dataset(args.dataset, getattr(args, "model", ""))
    if name == "digits":
        data = _digits(args.raw_data)
    elif name == "cifar10":
        data = _cifar10(args.datapath, args.raw_data, args.download)
    elif name == "pydoc" or name.startswith(("text:", "tokens:")):
        import lm
        data = lm.load_text_data(name, getattr(args, "model", ""), getattr(args, "seq_len", 0),
                                 getattr(args, "max_tokens", 0))
    elif ":" in name:
        data = _custom(name)
    else:
        raise UserError(f"unknown --dataset '{name}'; use digits, cifar10 or "
                        "package.module:function")
    if args.trainloader:
        data.train_x, data.train_y = _tensor_file(args.trainloader, "--trainloader")
    if args.testloader:
        data.test_x, data.test_y = _tensor_file(args.testloader, "--testloader")
    data.train_x, data.train_y = select(data.train_x, data.train_y, args)
    data.test_x, data.test_y = select(data.test_x, data.test_y, args)
    return data


def select(x: torch.Tensor, y: torch.Tensor, args: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply --max_samples, then --data_split/--split_idx (contiguous, disjoint parts)."""
    import numpy as np
    if args.max_samples:
        x, y = x[:args.max_samples], y[:args.max_samples]
    if args.data_split > 1:
        part = np.array_split(np.arange(len(x)), args.data_split)[args.split_idx]
        lo, hi = (int(part[0]), int(part[-1]) + 1) if len(part) else (0, 0)
        x, y = x[lo:hi], y[lo:hi]
    return x, y


def tensor_hash(*tensors: torch.Tensor) -> str:
    """SHA-256 (first 16 hex digits) of the tensors' dtypes, shapes and bytes.

    The bytes are hashed in 64 MiB chunks on two threads (hashlib releases the GIL) and
    the chunk digests hashed again: CIFAR-10's 50,000 float images (614 MB) take ~0.2 s.
    """
    from concurrent.futures import ThreadPoolExecutor

    import torch
    chunk = 1 << 26
    views, head = [], hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        head.update(f"{t.dtype}{tuple(t.shape)};".encode())
        raw = memoryview(t.view(-1).view(torch.uint8).numpy()) if t.numel() else memoryview(b"")
        views += [raw[i:i + chunk] for i in range(0, len(raw), chunk)] or [raw]
    with ThreadPoolExecutor(max_workers=2) as pool:
        digests = list(pool.map(lambda v: hashlib.sha256(v).digest(), views))
    for d in digests:
        head.update(d)
    return head.hexdigest()[:16]


def data_settings(args: Any, data: Data) -> dict:
    """What identifies the evaluation data in a surface file's settings: their content.

    A hash of the train and test images and labels, their sizes and the data set's name,
    with the split: not file names, --datapath or --max_samples, so the same data under
    another path (or --max_samples equal to the whole set) resumes, and other data with
    the same file name is refused.
    """
    return {"dataset": data.name, "n_train": len(data.train_y), "n_test": len(data.test_y),
            "data_hash": tensor_hash(data.train_x, data.train_y, data.test_x, data.test_y)}


def _digits(raw: bool) -> Data:
    import numpy as np
    import torch
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


def _cifar10(datapath: str, raw: bool, download: bool) -> Data:
    import numpy as np
    import torch
    folder = os.path.join(datapath, "cifar-10-batches-py")
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
    if missing and download:
        try:  # only fetch and extract (md5-checked); the batches are read below, safely
            from torchvision.datasets import CIFAR10
            from torchvision.datasets.utils import download_and_extract_archive
            download_and_extract_archive(CIFAR10.url, datapath, filename=CIFAR10.filename,
                                         md5=CIFAR10.tgz_md5)
        except Exception as e:  # network errors come in many types
            raise UserError(f"--download could not fetch CIFAR-10 into {datapath}: {_first_line(e)}")
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


# ------------------------------------------------------------- safe unpickling
def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """What a protocol-2 pickle of ``bytes`` calls (``_codecs.encode(s, 'latin1')``)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed only to make bytes from latin1")
    return text.encode("latin1")


def _allowed_globals() -> dict:
    import numpy as np
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): _latin1_encode}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = multiarray._reconstruct
        allowed[(mod, "scalar")] = multiarray.scalar
    return allowed


class _PlainDataUnpickler(pickle.Unpickler):
    """Admits only what a CIFAR-10 batch holds: dicts, lists, bytes, str, numbers and
    numpy arrays; any other global is refused before anything is called."""

    def find_class(self, module: str, name: str) -> Any:
        fn = _allowed_globals().get((module, name))
        if fn is None:
            raise _Forbidden(f"{module}.{name}")
        return fn


class _Forbidden(pickle.UnpicklingError):
    pass


def load_plain_pickle(path: str, what: str, fix: str) -> Any:
    """Unpickle ``path`` (Python 2 ``str`` as bytes) admitting only plain data and numpy
    arrays; anything else -- a global that could run code, a damaged file -- is a UserError
    saying ``path`` is not ``what`` and what to do (``fix``)."""
    try:
        with open(path, "rb") as f:
            return _PlainDataUnpickler(f, encoding="bytes").load()
    except _Forbidden as e:
        raise UserError(f"{path} is not {what} (it references {e}, which {what} never "
                        f"holds); it was not loaded; {fix}")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, OverflowError, MemoryError, UnicodeError) as e:
        raise UserError(f"{path} is not {what} or is damaged ({_first_line(e)}); {fix}")
    except OSError as e:
        raise UserError(f"cannot read {path} ({_first_line(e)})")


def _cifar_batch(path: str) -> tuple:
    import numpy as np
    fix = "re-extract cifar-10-python.tar.gz into --datapath"
    d = load_plain_pickle(path, "a CIFAR-10 python batch", fix)
    try:
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
    except (KeyError, TypeError, ValueError, IndexError, OverflowError) as e:
        raise UserError(f"{path} is not a CIFAR-10 python batch (no uint8 b'data' and int "
                        f"b'labels': {_first_line(e)}); {fix}")
    if data.ndim != 2 or data.shape[1] != 3072 or labels.ndim != 1 or len(labels) != len(data):
        raise UserError(f"{path} is not a CIFAR-10 python batch (data shape {data.shape}, "
                        f"{labels.size} labels; expected (N, 3072) and N labels); {fix}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise UserError(f"{path} has labels outside 0..9; {fix}")
    return data, labels


# ------------------------------------------------------------ user's data
def _custom(spec: str) -> Data:
    import torch
    out = call_user(import_object(spec, "--dataset"), spec, "--dataset")
    try:
        train, test = out
    except (TypeError, ValueError):
        raise UserError(f"--dataset {spec} must return (train, test), got {type(out).__name__}")
    tx, ty = as_tensors(train, f"--dataset {spec}", "train")
    vx, vy = as_tensors(test, f"--dataset {spec}", "test")
    if tx.shape[1:] != vx.shape[1:]:
        raise UserError(f"--dataset {spec}: train images {tuple(tx.shape[1:])} and test images "
                        f"{tuple(vx.shape[1:])} differ in shape")
    labels = torch.cat([ty, vy])
    if len(labels) and labels.min() < 0:
        raise UserError(f"--dataset {spec}: labels must be class indices >= 0")
    num_classes = int(labels.max().item()) + 1 if len(labels) else 0
    return Data(tx, ty, vx, vy, spec, num_classes)


def as_tensors(part: Any, what: str, which: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float32, labels int64) from an (images, labels) pair or a torch Dataset of
    (image, label) items; ``what`` and ``which`` name the source in the one-line errors."""
    import torch
    bad = (f"{what}: the {which} split must be (images, labels) or a torch Dataset "
           "of (image, label) items, with one integer label per image")
    try:
        if isinstance(part, torch.utils.data.Dataset) and not isinstance(part, tuple):
            items = [part[i] for i in range(len(part))]
            x = torch.stack([torch.as_tensor(a) for a, _ in items])
            y = torch.as_tensor([int(b) for _, b in items])
        else:
            x, y = part
            x, y = torch.as_tensor(x), torch.as_tensor(y)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{bad} ({_first_line(e)})")
    if x.dim() < 2 or y.dim() != 1 or len(x) != len(y) or y.is_floating_point() and \
            not torch.equal(y, y.round()) or y.is_complex() or x.is_complex():
        raise UserError(f"{bad} (got images {tuple(x.shape)}, labels {tuple(y.shape)})")
    if not len(y):
        raise UserError(f"{what}: the {which} split is empty")
    return x.float().contiguous(), y.long()


def _tensor_file(path: str, flag: str) -> tuple[torch.Tensor, torch.Tensor]:
    import torch
    if not os.path.isfile(path):
        raise UserError(f"{flag} file not found: {path}")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{flag} {path} is damaged or not a torch.save file of tensors (it was "
                        "not loaded: it is not a pickle of tensors and plain data); save "
                        "{'x': images, 'y': labels} with torch.save")
    except Exception as e:
        raise UserError(f"{flag} {path} is damaged or not a torch.save file ({_first_line(e)}); "
                        "save {'x': images, 'y': labels} with torch.save")
    try:
        if isinstance(d, dict) and "x" in d and "y" in d:
            x, y = torch.as_tensor(d["x"]), torch.as_tensor(d["y"])
        elif isinstance(d, (tuple, list)) and len(d) == 2:
            x, y = torch.as_tensor(d[0]), torch.as_tensor(d[1])
        else:
            x = y = None
    except Exception:
        x = y = None
    if x is None or x.dim() < 2 or y.dim() != 1 or len(x) != len(y):
        raise UserError(f"{flag} {path} must hold {{'x': images (N, ...), 'y': N labels}} "
                        "saved with torch.save")
    return x.float().contiguous(), y.long()
