"""Language models: HuggingFace folders, text and token data, next-token metrics.

``--model hf:DIR`` loads a local HuggingFace folder (``config.json`` and the weights, as
``save_pretrained`` writes them) with ``transformers``, offline (``local_files_only``), in
eval mode, without its key/value cache. Causal LMs are what the command line maps; a
sequence classifier (``...ForSequenceClassification``) loads too and is mapped through the
Python API with ``(input_ids, labels)``. ``--model_file``/``2``/``3`` name HF folders of the
same architecture (``--model_file`` defaults to DIR).

``--dataset pydoc``: the English prose of the standard library's ``pydoc_data.topics``
(embedded in every CPython: nothing to download), as ``text:`` reads a file.
``--dataset text:PATH``: a UTF-8 file or a folder of text files (sorted by name and
concatenated), tokenized with the model folder's tokenizer when it has one, else as bytes
(token = byte value; refused for a vocabulary below 256). ``--dataset tokens:FILE``: a
1-D ``.npy`` of unsigned integers, or a nanoGPT ``.bin`` (uint16; uint32 where the
vocabulary exceeds 65,536). The first 90 % of the tokens are the train split, the rest the
test split; ``--max_tokens N`` keeps the first N tokens of each; each split is cut into
consecutive windows of ``--seq_len`` tokens (default ``min(256, context)``), the last
partial window dropped, never shuffled. A window ``w`` is its own label (``labels=input_ids``):
it predicts ``w[1:]`` from ``w[:-1]``.

Metrics: the loss is the mean next-token cross-entropy over every prediction (labels
-100 are masked) and the accuracy the % of predictions whose argmax is the next token.

``transformers`` is imported only where a model is loaded or recognised, never at import.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any

import torch
import torch.nn.functional as F

from errors import UserError

IGNORE = -100  # the label HF models ignore (padding)
TRAIN_FRACTION = 0.9
DEFAULT_SEQ_LEN = 256
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


# ------------------------------------------------------------------------ metrics
def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of predicting ``labels[:, 1:]`` from ``logits[:, :-1]``."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                           labels[:, 1:].reshape(-1), ignore_index=IGNORE, reduction="sum")


def next_token_hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Predictions whose argmax is the next token (masked labels excluded)."""
    target = labels[:, 1:]
    return ((logits[:, :-1].argmax(dim=-1) == target) & (target != IGNORE)).sum()


def prediction_count(labels: torch.Tensor) -> int:
    """Predictions in a set: one per sample (class labels, 1-D), or one per next token of
    each window (token labels, 2-D) except masked ones."""
    if labels.dim() == 2:
        return int((labels[:, 1:] != IGNORE).sum())
    return len(labels)


def logits_of(out: Any) -> Any:
    """The logits of a model's output (HF models return a ModelOutput)."""
    if torch.is_tensor(out):
        return out
    logits = getattr(out, "logits", None)
    return logits if torch.is_tensor(logits) else out


# ------------------------------------------------------------------------- models
def is_hf_name(model: str) -> bool:
    return isinstance(model, str) and model.startswith("hf:")


def is_hf_model(net: Any) -> bool:
    """A transformers model (never imports transformers: an HF model implies it is loaded)."""
    if "transformers" not in sys.modules:
        return False
    from transformers import PreTrainedModel
    return isinstance(net, PreTrainedModel)


def is_causal_lm(net: Any) -> bool:
    if not is_hf_model(net):
        return False
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    return type(net).__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()) or \
        type(net).__name__.endswith(("ForCausalLM", "LMHeadModel"))


def quiet_transformers() -> None:
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def check_folder(path: str, flag: str = "--model") -> str:
    """``path`` if it is an HF folder with a config and weights, else one UserError."""
    if not path:
        raise UserError(f"{flag} hf:DIR needs a folder (hf:path/to/folder)")
    if not os.path.isdir(path):
        what = "a file, not a folder" if os.path.isfile(path) else "not found"
        raise UserError(f"{flag} {path}: {what}; give a HuggingFace folder as save_pretrained writes it "
                        "(config.json and model.safetensors)")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise UserError(f"{flag} {path} has no config.json; it is not a HuggingFace model folder "
                        "(save the model with save_pretrained)")
    if not any(os.path.isfile(os.path.join(path, f)) for f in WEIGHT_FILES):
        raise UserError(f"{flag} {path} holds no weights (none of {', '.join(WEIGHT_FILES[:2])}); "
                        "save the model with save_pretrained")
    return path


def load_config(path: str, flag: str = "--model") -> Any:
    """The folder's config (checked: a model type transformers knows)."""
    check_folder(path, flag)
    quiet_transformers()
    from transformers import AutoConfig
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, UnicodeError, ValueError) as e:
        raise UserError(f"{flag} {path}: config.json is not readable JSON ({_line(e)})")
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except (Exception, SystemExit) as e:
        kind = raw.get("model_type") if isinstance(raw, dict) else None
        import transformers
        if kind:
            raise UserError(f"{flag} {path}: config.json's model_type '{kind}' is unknown to transformers "
                            f"{transformers.__version__} ({_line(e)}); upgrade transformers or give "
                            "another model")
        raise UserError(f"{flag} {path}: transformers cannot read config.json ({_line(e)})")


def load_hf(path: str, flag: str = "--model") -> torch.nn.Module:
    """The model of an HF folder: a causal LM, or a sequence classifier where the folder's
    architecture says so; eval mode, no key/value cache."""
    config = load_config(path, flag)
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    archs = getattr(config, "architectures", None) or []
    auto = AutoModelForSequenceClassification if any(a.endswith("ForSequenceClassification") for a in archs) \
        else AutoModelForCausalLM
    try:
        net = auto.from_pretrained(path, local_files_only=True)
    except (Exception, SystemExit) as e:
        raise UserError(f"{flag} {path}: transformers cannot load it as a {auto.__name__[9:]} "
                        f"({_line(e)}); check the folder's weights and config.json")
    net.config.use_cache = False
    return net.eval()


def folder_hash(path: str) -> str:
    """SHA-256 (16 hex digits) of an HF folder's config and weight files: the checkpoint's identity."""
    check_folder(path)
    h = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        if name == "config.json" or name.endswith((".safetensors", ".bin", ".index.json")):
            h.update(name.encode() + b"\0")
            with open(os.path.join(path, name), "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def context_of(config: Any) -> int | None:
    for key in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        v = getattr(config, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def filter_axis(net: torch.nn.Module, name: str) -> int:
    """The dimension along which entry ``name`` of ``net`` holds its filters (output units):
    1 for transformers' Conv1D, whose weight is (in, out); 0 for every other module."""
    module_name, _, leaf = name.rpartition(".")
    if leaf != "weight":
        return 0
    try:
        module = net.get_submodule(module_name)
    except AttributeError:
        return 0
    cls = type(module)
    return 1 if cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers") else 0


# --------------------------------------------------------------------------- data
def is_text_dataset(name: str) -> bool:
    return isinstance(name, str) and (name == "pydoc" or name.startswith(("text:", "tokens:")))


def _line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _read_text(path: str) -> str:
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path)
                       if os.path.isfile(os.path.join(path, f)) and not f.startswith("."))
        if not files:
            raise UserError(f"--dataset text:{path}: the folder holds no files")
    elif os.path.isfile(path):
        files = [path]
    else:
        raise UserError(f"--dataset text:{path}: not found; give a UTF-8 text file or a folder of them")
    parts = []
    for f in files:
        try:
            with open(f, encoding="utf-8") as fh:
                parts.append(fh.read())
        except UnicodeError as e:
            raise UserError(f"--dataset text: {f} is not UTF-8 text ({_line(e)})")
        except OSError as e:
            raise UserError(f"--dataset text: cannot read {f} ({_line(e)})")
    return "".join(parts)


def _tokenize(text: str, model_dir: str | None, vocab: int) -> torch.Tensor:
    """The token stream of ``text``: the model folder's tokenizer, else its UTF-8 bytes."""
    import numpy as np
    if model_dir and any(os.path.isfile(os.path.join(model_dir, f)) for f in TOKENIZER_FILES):
        quiet_transformers()
        from transformers import AutoTokenizer
        try:
            tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            ids = tok(text, add_special_tokens=False)["input_ids"]
        except (Exception, SystemExit) as e:
            raise UserError(f"the tokenizer of {model_dir} failed ({_line(e)}); repair it or remove its "
                            "tokenizer files to use byte tokens")
        return torch.tensor(ids, dtype=torch.int64)
    if vocab < 256:
        raise UserError(f"--dataset text: without a tokenizer in the model folder the tokens are bytes "
                        f"(0..255), but the model's vocabulary has {vocab} tokens; save a tokenizer "
                        "with the model or use a vocabulary of at least 256")
    return torch.from_numpy(np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64))


def _read_tokens(path: str, vocab: int) -> torch.Tensor:
    import numpy as np
    if not os.path.isfile(path):
        raise UserError(f"--dataset tokens:{path}: not found; give a .npy or .bin file of token ids")
    try:
        if path.endswith(".npy"):
            a = np.load(path, allow_pickle=False, mmap_mode="r")
        elif path.endswith(".bin"):
            a = np.memmap(path, dtype=np.uint16 if vocab <= 65536 else np.uint32, mode="r")
        else:
            raise UserError(f"--dataset tokens:{path}: use a .npy array or a nanoGPT .bin file")
    except UserError:
        raise
    except (Exception, SystemExit) as e:
        raise UserError(f"--dataset tokens:{path} is damaged or not a token array ({_line(e)})")
    if a.ndim != 1 or a.dtype.kind not in "ui":
        raise UserError(f"--dataset tokens:{path} must be a 1-D array of integer token ids "
                        f"(uint16/uint32); it is {a.dtype} of shape {a.shape}")
    return torch.from_numpy(np.asarray(a, dtype=np.int64))


def windows(stream: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Consecutive non-overlapping windows (N, seq_len); the last partial one dropped."""
    n = len(stream) // seq_len
    return stream[:n * seq_len].reshape(n, seq_len).contiguous()


def seq_len_for(config: Any, requested: int) -> int:
    ctx = context_of(config)
    if requested < 0:
        raise UserError(f"--seq_len must be >= 2 (got {requested})")
    if not requested:
        return min(DEFAULT_SEQ_LEN, ctx or DEFAULT_SEQ_LEN)
    if requested < 2:
        raise UserError(f"--seq_len must be >= 2 (a window predicts its tokens 2..seq_len; got {requested})")
    if ctx and requested > ctx:
        raise UserError(f"--seq_len {requested} is longer than the model's context ({ctx} tokens); use "
                        f"--seq_len {ctx} or less")
    return requested


def pydoc_text() -> str:
    """English prose every CPython ships: the help topics of ``pydoc_data.topics`` (about
    465 KB), concatenated in the order of their names."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise UserError("--dataset pydoc needs the standard library's pydoc_data (missing in this Python); "
                        "give --dataset text:PATH")
    return "".join(topics[k] for k in sorted(topics))


def token_splits(name: str, tokenizer_dir: str | None, vocab: int, seq_len: int,
                 max_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) windows of ``--dataset name`` (``text:PATH``, ``tokens:FILE`` or
    ``pydoc``): the first 90 % of the tokens train, the rest test, ``max_tokens`` of each."""
    if max_tokens < 0:
        raise UserError(f"--max_tokens must be >= 0 (got {max_tokens})")
    kind, _, path = name.partition(":")
    if kind == "tokens":
        stream = _read_tokens(path, vocab)
    else:
        stream = _tokenize(pydoc_text() if kind == "pydoc" else _read_text(path), tokenizer_dir, vocab)
    if len(stream) and (int(stream.max()) >= vocab or int(stream.min()) < 0):
        raise UserError(f"--dataset {name} holds token ids up to {int(stream.max())} but the model's "
                        f"vocabulary has {vocab}; use the model's tokenizer")
    cut = int(len(stream) * TRAIN_FRACTION)
    train, test = stream[:cut], stream[cut:]
    if max_tokens:
        train, test = train[:max_tokens], test[:max_tokens]
    tw, vw = windows(train, seq_len), windows(test, seq_len)
    if not len(tw):
        raise UserError(f"--dataset {name}: the train split has {len(train)} tokens, fewer than one window "
                        f"of --seq_len {seq_len}; give more text, a larger --max_tokens or a smaller --seq_len")
    return tw, vw


def load_text_data(name: str, model: str, seq_len: int = 0, max_tokens: int = 0) -> Any:
    """The Data of ``text:PATH`` / ``tokens:FILE`` / ``pydoc`` for the model ``hf:DIR``
    (windows as inputs and labels)."""
    from dataloader import Data
    if not is_hf_name(model):
        raise UserError(f"--dataset {name} is text for a language model, but --model {model or '(none)'} "
                        "is not one; give --model hf:DIR (a HuggingFace causal LM folder)")
    model_dir = model[3:]
    config = load_config(model_dir)
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    tw, vw = token_splits(name, model_dir, vocab, seq_len_for(config, seq_len), max_tokens)
    return Data(tw, tw, vw, vw, name.partition(":")[0], vocab, kind="tokens")


def as_token_data(net: torch.nn.Module, data: Any, test_data: Any = None) -> Any:
    """The API's data for an HF model: a 1-D token stream (cut into windows of
    min(256, context)), (N, T) windows of a causal LM, or ``(input_ids, labels)`` for a
    sequence classifier."""
    from dataloader import Data

    def one(d: Any, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(d, (tuple, list)) and len(d) == 2:
            x, y = torch.as_tensor(d[0]), torch.as_tensor(d[1])
        else:
            x = torch.as_tensor(d)
            if x.dim() == 1:
                x = windows(x, seq_len_for(net.config, 0))
            y = x
        if x.dim() != 2 or x.is_floating_point() or y.is_floating_point() or len(x) != len(y):
            raise UserError(f"the {which} data of a language model must be token ids: a 1-D stream, (N, T) "
                            "windows, or (input_ids, labels) for a sequence classifier; got "
                            f"{tuple(x.shape)} {x.dtype}")
        if not len(x):
            raise UserError(f"the {which} data hold no full window of tokens")
        return x.long().contiguous(), y.long().contiguous()
    tx, ty = one(data, "train")
    vx, vy = one(test_data, "test") if test_data is not None else (tx[:0], ty[:0])
    vocab = int(getattr(net.config, "vocab_size", 0) or 0)
    return Data(tx, ty, vx, vy, "tokens", vocab, kind="tokens")


def check_fits(net: torch.nn.Module, data: Any, name: str, loss_fn: Any = None) -> None:
    """One UserError unless ``net`` (a language model) and ``data`` (tokens) go together."""
    tokens = getattr(data, "kind", "images") == "tokens"
    if not is_hf_model(net):
        raise UserError(f"--dataset {data.name} is token data for a language model, but --model {name} is "
                        "not a HuggingFace model; give --model hf:DIR")
    if not tokens:
        raise UserError(f"--model {name} is a language model but --dataset {data.name} holds images; give "
                        "--dataset text:PATH or tokens:FILE")
    x, y = (data.train_x, data.train_y) if len(data.train_x) else (data.test_x, data.test_y)
    if y.dim() == 2 and not is_causal_lm(net):
        raise UserError(f"--model {name} is a {type(net).__name__}, not a causal language model: text and "
                        "token data need a causal LM (map a sequence classifier through the Python API "
                        "with (input_ids, labels))")
    vocab = int(getattr(net.config, "vocab_size", 0) or 0)
    if len(x) and vocab and int(x.max()) >= vocab:
        raise UserError(f"the data hold token ids up to {int(x.max())} but --model {name} has a vocabulary "
                        f"of {vocab}")
    ctx = context_of(net.config)
    if ctx and x.shape[1] > ctx:
        raise UserError(f"the windows have {x.shape[1]} tokens, more than the model's context ({ctx})")
    if loss_fn is None:
        return
    device = next(net.parameters()).device
    with torch.no_grad():
        try:
            out = logits_of(net(x[:2].to(device)))
            value = loss_fn(out, y[:2].to(device))
        except UserError:
            raise
        except (Exception, SystemExit) as e:
            raise UserError(f"--model {name} failed on the windows of --dataset {data.name}: {_line(e)}")
    if not torch.is_tensor(value) or value.numel() != 1:
        raise UserError(f"the loss must give one number per batch on the model's outputs {tuple(out.shape)}")
