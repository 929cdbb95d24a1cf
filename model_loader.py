"""Build models by name and load checkpoints into them, safely.

``build_model(name)``: a name of the zoo (``cifar10/models``: vgg9, resnet56, ...,
digits_cnn, digits_mlp) or ``package.module:factory`` for your own model
(``factory()`` returns an ``nn.Module``). ``load("hf:DIR", FOLDER)`` loads a HuggingFace
folder (lm.py); its checkpoints are folders, hashed by ``file_hash`` too.

``load_state_dict(path)`` accepts the original code's ``{'acc', 'epoch',
'state_dict'}`` checkpoints, bare state_dicts, DataParallel ``module.``-prefixed keys
and legacy files saved before BatchNorm had ``num_batches_tracked``. It always uses
``torch.load(weights_only=True)``, so a checkpoint cannot run code; a file that needs
full unpickling is refused unless ``--unsafe_load`` says the file is trusted.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import pickletools
import zipfile
from typing import Any

import torch
import torch.nn as nn

from errors import UserError
from errors import first_line as _first_line
from plugins import call_user, import_object

UNSAFE_FLAG = "--unsafe_load"
_NAME_ATTR = "_landscape_model_name"


def zoo() -> dict:
    from cifar10.models import MODELS
    return MODELS


def build_model(name: str) -> nn.Module:
    """A fresh model: a zoo name or ``package.module:factory``."""
    if not isinstance(name, str) or not name.strip():
        raise UserError("--model is empty; give a zoo name (vgg9, resnet56, digits_cnn, ...) "
                        "or package.module:factory")
    if ":" in name:
        net = call_user(import_object(name, "--model"), name, "--model")
        if not isinstance(net, nn.Module):
            raise UserError(f"--model {name} must return a torch.nn.Module, got {type(net).__name__}")
    else:
        models = zoo()
        if name not in models:
            raise UserError(f"unknown --model '{name}'; choose one of {', '.join(sorted(models))} "
                            "or give package.module:factory")
        net = models[name]()
    object.__setattr__(net, _NAME_ATTR, name)  # for check_fits' message
    return net


# ----------------------------------------------------------------- model and data
def _expected_input(name: str) -> tuple[tuple[int, ...], str] | None:
    """(C, H, W) and the data set a zoo model is made for; None for custom models."""
    if not name or ":" in name or name not in zoo():
        return None
    return ((1, 8, 8), "digits") if name.startswith("digits_") else ((3, 32, 32), "CIFAR-10")


def check_fits(net: nn.Module, data: Any, model: str | None = None, loss_fn: Any = None,
               loss_name: str = "") -> None:
    """One clear UserError unless ``net`` takes ``data``'s images and predicts its classes.

    Zoo models are checked against the images they are made for (CIFAR zoo: 3x32x32,
    digits_*: 1x8x8); then one forward pass of two samples, in eval mode without
    gradients, must give (2, num_classes) outputs. Whatever a custom model raises
    becomes one line naming it. For a custom data set, whose number of classes is
    inferred from its labels, more outputs than classes are accepted. With ``loss_fn``
    (evaluation.get_loss_fn's (outputs, labels) -> summed loss), the loss is tried on
    those outputs too: it must give one finite number, whatever it raises is one line.
    """
    name = model or getattr(net, _NAME_ATTR, "") or type(net).__name__
    if getattr(data, "kind", "images") == "tokens" or _is_hf(net):
        import lm
        return lm.check_fits(net, data, name, loss_fn)
    x = data.train_x if len(data.train_x) else data.test_x
    if not len(x):
        raise UserError(f"the {data.name} data are empty; check --max_samples/--data_split")
    shape = tuple(x.shape[1:])
    given = "x".join(map(str, shape))
    want = _expected_input(name)
    if want is not None and shape != want[0]:
        fix = ("pass --dataset cifar10 or a digits model (digits_cnn, digits_mlp)"
               if want[1] == "CIFAR-10" else
               "pass --dataset digits or a CIFAR-10 model (vgg9, resnet56, ...)")
        raise UserError(f"--model {name} expects {want[0][0]}-channel {want[0][1]}x{want[0][2]} "
                        f"images ({want[1]}) but --dataset {data.name} gives {given}; {fix}")
    params = list(net.parameters()) + list(net.buffers())
    device = params[0].device if params else torch.device("cpu")
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(x[:2].to(device))
    except UserError:
        raise
    except (Exception, SystemExit) as e:
        raise UserError(f"--model {name} cannot take the images of --dataset {data.name} "
                        f"({given}): it raised {_first_line(e)}")
    finally:
        net.train(was_training)
    n = len(x[:2])
    if not torch.is_tensor(out) or out.dim() != 2 or out.shape[0] != n:
        got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise UserError(f"--model {name} must return (batch, classes) scores; for {n} images "
                        f"of {data.name} it returned {got}")
    width, k = out.shape[1], data.num_classes
    known = data.name in ("digits", "cifar10")
    if width < k or (known and width != k):
        raise UserError(f"--model {name} gives {width} outputs but --dataset {data.name} has "
                        f"{k} classes; use a model with {k} outputs or the data set it is made for")
    if loss_fn is not None:
        _check_loss(loss_fn, loss_name or "the loss", out, data)


def check_same_architecture(net: nn.Module, other: nn.Module, name: str, base: str = "model") -> None:
    """One UserError unless ``other`` has ``net``'s entries and shapes (``name``: how the
    user gave ``other``; ``base``: how they gave ``net``)."""
    a = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in other.state_dict().items()}
    if a != b:
        diff = next((k for k in a if b.get(k) != a[k]), None) or next(k for k in b if k not in a)
        raise UserError(f"{name} is not the same architecture as {base} (its '{diff}' is "
                        f"{b.get(diff, 'absent')}, the model's {a.get(diff, 'absent')}); the direction "
                        "between them needs two checkpoints of one network")


def _check_loss(loss_fn: Any, loss_name: str, out: torch.Tensor, data: Any) -> None:
    y = (data.train_y if len(data.train_y) else data.test_y)[:len(out)].to(out.device)
    try:
        with torch.no_grad():
            value = loss_fn(out, y)
    except UserError:
        raise
    except (Exception, SystemExit) as e:
        raise UserError(f"--loss_name {loss_name} raised {_first_line(e)} on the model's "
                        f"outputs {tuple(out.shape)} and labels {tuple(y.shape)}")
    if not torch.is_tensor(value) or value.numel() != 1:
        got = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
        raise UserError(f"--loss_name {loss_name} must return a loss per sample (shape "
                        f"({len(y)},)) or one number for the batch; it returned {got}")


# -------------------------------------------------------------------- checkpoints
def _damaged(path: str, why: str) -> UserError:
    return UserError(f"checkpoint {path} is damaged or not a PyTorch checkpoint ({why}); "
                     "re-save or re-download it")


def _plain_globals() -> set[str]:
    """What torch's weights-only loader admits (tensor rebuilders, storages, OrderedDict...)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals
        return set(_get_allowed_globals())
    except Exception:  # a private API: fall back to the essentials
        return {"collections.OrderedDict", "_codecs.encode", "torch._utils._rebuild_tensor_v2",
                "torch._utils._rebuild_parameter", "torch.FloatStorage", "torch.LongStorage"}


def _pickle_globals(path: str) -> list[str] | None:
    """The globals the checkpoint's pickle references, read without unpickling; None if
    the pickle is not well formed (a damaged file)."""
    def scan(stream, count):
        names, strings = [], []
        for _ in range(count):
            for op, arg, _pos in pickletools.genops(stream):
                if op.name == "GLOBAL":
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
        return names
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                pkl = [n for n in z.namelist() if n.endswith("data.pkl")]
                if len(pkl) != 1:
                    return None
                with z.open(pkl[0]) as f:
                    return scan(f, 1)
        with open(path, "rb") as f:
            return scan(f, 4)  # the legacy format: magic, version, sys info, the object
    except Exception:
        return None


def _check_zip(path: str) -> None:
    """A zip checkpoint whose bytes do not match its checksums is damaged (torch's own
    reader does not check them and would load flipped bytes silently)."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except Exception as e:
        raise _damaged(path, _first_line(e))
    if bad is not None:
        raise _damaged(path, f"{bad} fails its CRC check")


def load_state_dict(path: str, allow_unsafe: bool = False) -> dict:
    """The state_dict stored in a checkpoint file, keys without ``module.`` prefixes."""
    if not os.path.isfile(path):
        what = "a folder, not a file" if os.path.isdir(path) else "not found"
        raise UserError(f"checkpoint {path}: {what}")
    if os.path.getsize(path) == 0:
        raise _damaged(path, "the file is empty")
    _check_zip(path)
    obj = _torch_load(path, allow_unsafe)
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise UserError(f"{path} holds no state_dict (expected a dict with 'state_dict', or a "
                        "dict of tensors)")
    return {(k[7:] if str(k).startswith("module.") else k): v for k, v in obj.items()}


def _torch_load(path: str, allow_unsafe: bool) -> Any:
    """``torch.load`` of tensors and plain data; a pickle that references other globals
    only with ``allow_unsafe``; every failure one UserError line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        _check_unsafe_globals(path, allow_unsafe)
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e2:
            raise UserError(f"cannot load checkpoint {path} even with {UNSAFE_FLAG} "
                            f"({_first_line(e2)})")
    except MemoryError:
        raise _damaged(path, "it claims more memory than this machine has")
    except Exception as e:
        raise _damaged(path, _first_line(e)[:160])


def _check_unsafe_globals(path: str, allow_unsafe: bool) -> None:
    """The checkpoint failed the tensors-only load: damaged, or it references globals that
    could run code (allowed only with ``allow_unsafe``)."""
    names = _pickle_globals(path)
    plain = _plain_globals()
    odd = sorted({n for n in names or [] if n not in plain})
    if names is None or not odd:
        raise _damaged(path, "its pickled data are cut off, corrupted or not a checkpoint's")
    if not allow_unsafe:
        shown = ", ".join(odd[:3]) + (f" (+{len(odd) - 3} more)" if len(odd) > 3 else "")
        raise UserError(f"{path} holds more than tensors and plain data (it references "
                        f"{shown}), so loading it could run code; if you trust this file, "
                        f"rerun with {UNSAFE_FLAG}")


def apply_state_dict(net: nn.Module, state: dict, path: str) -> nn.Module:
    """Copy ``state`` into ``net`` after checking it fits; one clear error if not."""
    own = net.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", shapes)):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{label}: {', '.join(items[:5])}{more}")
        raise UserError(f"checkpoint {path} does not fit this model; " + "; ".join(parts)
                        + "; check --model")
    net.load_state_dict(state, strict=False)
    return net


def _is_hf(net: Any) -> bool:
    import lm
    return lm.is_hf_model(net)


def load(model_name: str, model_file: str | None = None, allow_unsafe: bool = False) -> nn.Module:
    """Build ``model_name`` and, if given, load ``model_file`` into it; eval mode. For
    ``hf:DIR`` the model of the folder ``model_file`` (default DIR)."""
    if model_name.startswith("hf:"):
        import lm
        return lm.load_hf(model_file or model_name[3:], "--model_file" if model_file else "--model")
    net = build_model(model_name)
    if model_file:
        apply_state_dict(net, load_state_dict(model_file, allow_unsafe), model_file)
    return net.eval()


def file_hash(path: str) -> str:
    """SHA-256 of a file's content (first 16 hex digits): identifies a checkpoint (an HF
    folder: its config and weight files, lm.folder_hash)."""
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")):
        import lm
        return lm.folder_hash(path)
    if not os.path.isfile(path):
        what = "a folder, not a file" if os.path.isdir(path) else "not found"
        raise UserError(f"checkpoint {path}: {what}")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]
