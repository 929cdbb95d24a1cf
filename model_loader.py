"""Build models by name and load checkpoints into them, safely.

``build_model(name)``: a name of the zoo (``cifar10/models``: vgg9, resnet56, ...,
digits_cnn, digits_mlp) or ``package.module:factory`` for your own model
(``factory()`` returns an ``nn.Module``).

``load_state_dict(path)`` accepts the original code's ``{'acc', 'epoch',
'state_dict'}`` checkpoints, bare state_dicts, DataParallel ``module.``-prefixed keys
and legacy files saved before BatchNorm had ``num_batches_tracked``. It always uses
``torch.load(weights_only=True)``, so a checkpoint cannot run code; a file that needs
full unpickling is refused unless ``--unsafe_load`` says the file is trusted.
"""
import hashlib
import os
import pickle

import torch
import torch.nn as nn

from dataloader import import_object
from errors import UserError

UNSAFE_FLAG = "--unsafe_load"


def zoo():
    from cifar10.models import MODELS
    return MODELS


def build_model(name):
    """A fresh model: a zoo name or ``package.module:factory``."""
    if ":" in name:
        net = import_object(name, "--model")()
        if not isinstance(net, nn.Module):
            raise UserError(f"--model {name} must return a torch.nn.Module, got {type(net).__name__}")
        return net
    models = zoo()
    if name not in models:
        raise UserError(f"unknown --model '{name}'; choose one of {', '.join(sorted(models))} "
                        "or give package.module:factory")
    return models[name]()


def load_state_dict(path, allow_unsafe=False):
    """The state_dict stored in a checkpoint file, keys without ``module.`` prefixes."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not allow_unsafe:
            raise UserError(f"{path} holds more than tensors and plain data, so loading it could "
                            f"run code; if you trust this file, rerun with {UNSAFE_FLAG} "
                            f"({str(e).splitlines()[0][:120]})")
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f"cannot read checkpoint {path}: {str(e).splitlines()[0][:200]}")
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise UserError(f"{path} holds no state_dict (expected a dict with 'state_dict', or a "
                        "dict of tensors)")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def apply_state_dict(net, state, path):
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


def load(model_name, model_file=None, allow_unsafe=False):
    """Build ``model_name`` and, if given, load ``model_file`` into it; eval mode."""
    net = build_model(model_name)
    if model_file:
        apply_state_dict(net, load_state_dict(model_file, allow_unsafe), model_file)
    return net.eval()


def file_hash(path):
    """SHA-256 of a file's content (first 16 hex digits): identifies a checkpoint."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]
