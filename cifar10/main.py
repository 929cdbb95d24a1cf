"""Train a model of the zoo (or your own) on the digits data, CIFAR-10 or your own data.

    python cifar10/main.py --dataset digits --model digits_cnn --epochs 20 --batch_size 32
    python cifar10/main.py --dataset cifar10 --model resnet56 --cuda      # the original recipe

Same flags, folder naming, checkpoints and learning-rate schedule as the original
loss-landscape ``cifar10/main.py``: checkpoints go to
``<--save>/<model>_<optimizer>_lr=<lr>_bs=<bs>_wd=<wd>[_mom=<momentum>][_save_epoch=<k>][...]/``
(``_mom=``/``_save_epoch=`` only when not the defaults 0.9/10, so the original's released
runs' names come out: ``resnet56_sgd_lr=0.1_bs=128_wd=0.0005``,
``vgg9_sgd_lr=0.1_bs=128_wd=0.0_save_epoch=1``) as ``model_<epoch>.t7`` =
{'acc', 'epoch', 'state_dict'} and ``opt_state_<epoch>.t7`` = {'optimizer'}, for epoch 0
(before training), epoch 1, every ``--save_epoch`` epochs and the last one; ``log.out``
gets one line per epoch and ``train_settings.json`` marks the folder as this script's run.
The data sit in memory as tensors and are batched, shuffled and augmented there (no
DataLoader workers).

A rerun of the same command resumes from the last checkpoint of its folder (model,
optimizer state and epoch; bit-identical to an uninterrupted run on the CPU); Ctrl-C or
SIGTERM stops with exit status 130/143 and one line saying so. A folder holding
checkpoints that this script did not write (no ``train_settings.json``, e.g. the
original's released ``model_300.t7``) or a run with other settings is refused unless
``--overwrite``. See doc/training.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import signal
import sys
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import dataloader  # noqa: E402
import flags  # noqa: E402
import grid  # noqa: E402
import model_loader  # noqa: E402
from errors import UserError, first_line, run_main  # noqa: E402
from fileio import save_torch, settings_diff, written_atomically  # noqa: E402

DEFAULT_SAVE = os.path.join(REPO, "cifar10", "trained_nets")
LR_DECAY_EPOCHS = (150, 225, 275)  # the original's decay epochs for a 300-epoch run
SETTINGS_FILE = "train_settings.json"   # marks a run folder as written by this script
SETTINGS_FORMAT = {"format": "loss-landscape-training", "format_version": 1}
# flags that do not change what the run computes (where it runs, how it was started)
NOT_SETTINGS = ("save", "cuda", "ngpu", "threads", "resume_model", "resume_opt", "overwrite",
                "datapath", "download", "trainloader", "testloader", "unsafe_load")


def build_parser() -> flags.ArgumentParser:
    p = flags.ArgumentParser("Train a model for loss-landscape plots", prog="cifar10/main.py")
    p.add_argument("--batch_size", default=128, type=int, help="minibatch size (also for evaluation)")
    p.add_argument("--lr", default=0.1, type=float, help="learning rate")
    p.add_argument("--lr_decay", default=0.1, type=float,
                   help="multiply the learning rate by this at 1/2, 3/4 and 11/12 of the epochs")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"],
                   help="sgd (Nesterov momentum when --momentum > 0) or adam")
    p.add_argument("--weight_decay", default=0.0005, type=float, help="L2 penalty of the optimizer")
    p.add_argument("--momentum", default=0.9, type=float, help="SGD momentum")
    p.add_argument("--epochs", default=300, type=int, help="number of epochs to train")
    p.add_argument("--save", default=DEFAULT_SAVE,
                   help="output root: the run's folder is created inside it")
    p.add_argument("--save_epoch", default=10, type=int, help="save every K epochs")
    p.add_argument("--overwrite", action="store_true",
                   help="train from scratch into the run's folder even if it holds a run with other "
                        "settings or checkpoints this script did not write (those of the epochs it "
                        "saves are replaced)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads; 0: $OMP_NUM_THREADS when set, else the machine's cores")
    p.add_argument("--ngpu", type=int, default=1, help="number of GPUs (DataParallel) with --cuda")
    p.add_argument("--cuda", action="store_true", help="train on the GPU")
    p.add_argument("--rand_seed", default=0, type=int, help="seed of every random choice")
    p.add_argument("--resume_model", default="",
                   help="continue from this model_<epoch>.t7 (without it, a rerun resumes from the "
                        "last checkpoint of the run's folder)")
    p.add_argument("--resume_opt", default="", help="with the optimizer of this opt_state_<epoch>.t7")
    p.add_argument("--model", "-m", default="vgg9",
                   help="a zoo name (vgg9, resnet56, digits_cnn, ...) or package.module:factory")
    p.add_argument("--loss_name", "-l", default="crossentropy", choices=["crossentropy", "mse"],
                   help="crossentropy, or mse of the softmax outputs against one-hot labels")
    p.add_argument("--noaug", action="store_true", help="no data augmentation")
    p.add_argument("--label_corrupt_prob", type=float, default=0.0,
                   help="fraction of training labels replaced by a different, random label")
    p.add_argument("--idx", default=0, type=int, help="index of a repeated experiment")
    dataloader.add_data_args(p)
    return p


def name_save_folder(args: argparse.Namespace) -> str:
    """The original's folder name, as its released runs are named (README paths):
    ``_mom=`` and ``_save_epoch=`` appear only for values other than the defaults (0.9,
    10); ``_dataset=``/``_max_samples=`` only for data the original could not train on
    (a data set other than the model's own, subsets)."""
    name = f"{args.model}_{args.optimizer}_lr={args.lr}"
    if args.lr_decay != 0.1:
        name += f"_lr_decay={args.lr_decay}"
    name += f"_bs={args.batch_size}_wd={args.weight_decay}"
    if args.momentum != 0.9:
        name += f"_mom={args.momentum}"
    if args.save_epoch != 10:
        name += f"_save_epoch={args.save_epoch}"
    if args.loss_name != "crossentropy":
        name += f"_loss={args.loss_name}"
    if args.noaug:
        name += "_noaug"
    if args.raw_data:
        name += "_rawdata"
    if args.label_corrupt_prob > 0:
        name += f"_randlabel={args.label_corrupt_prob}"
    if args.ngpu > 1:
        name += f"_ngpu={args.ngpu}"
    if args.idx:
        name += f"_idx={args.idx}"
    dataset = dataloader.resolve_dataset(args.dataset, args.model)
    if dataset != dataloader.resolve_dataset("", args.model):
        name += f"_dataset={dataset}"
    if args.max_samples:
        name += f"_max_samples={args.max_samples}"
    # a package.module:factory model (or data set) gives no ':' or '/' in the folder name
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", name)


def corrupt_labels(labels: torch.Tensor, prob: float, num_classes: int, seed: int) -> torch.Tensor:
    """Change exactly round(prob * N) labels, chosen at random, each to a different
    random class; deterministic given the seed."""
    g = torch.Generator().manual_seed(seed)
    n = round(prob * len(labels))
    idx = torch.randperm(len(labels), generator=g)[:n]
    shift = torch.randint(1, num_classes, (n,), generator=g)
    out = labels.clone()
    out[idx] = (labels[idx] + shift) % num_classes
    return out


def lr_at(epoch: int, args: argparse.Namespace) -> float:
    """The original schedule: the rate decays after epochs 150, 225 and 275 of 300;
    for other run lengths the same fractions of ``--epochs`` (rounded down)."""
    milestones = {m * args.epochs // 300 for m in LR_DECAY_EPOCHS}
    return args.lr * args.lr_decay ** sum(1 for m in milestones if 0 < m < epoch)


def init_params(net: nn.Module) -> None:
    """The original's initialization: Kaiming-normal convs, unit BN, N(0, 1e-3) linears."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=1e-3)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def augment(x: torch.Tensor, g: torch.Generator, fill: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Random 32x32 crop of the image padded by 4 pixels of value ``fill`` and random
    horizontal flip, per image (the original's RandomCrop(32, padding=4) +
    RandomHorizontalFlip; it padded black pixels before normalizing)."""
    n, _, h, w = x.shape
    padded = F.pad(x - fill, (4, 4, 4, 4)) + fill
    dy, dx = (torch.randint(0, 9, (2, n), generator=g)).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    out = padded[torch.arange(n, device=x.device)[:, None, None, None],
                 torch.arange(x.shape[1], device=x.device)[None, :, None, None], rows, cols]
    flip = (torch.rand(n, generator=g) < 0.5).to(x.device)[:, None, None, None]
    return torch.where(flip, out.flip(3), out)


def loss_and_hits(net: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_name: str,
                  num_classes: int) -> tuple[torch.Tensor, int]:
    """The original's losses: cross-entropy on logits, or MSE of softmax vs one-hot."""
    out = net(x)
    if loss_name == "mse":
        loss = F.mse_loss(F.softmax(out, dim=1), F.one_hot(y, num_classes).float())
    else:
        loss = F.cross_entropy(out, y)
    return loss, (out.argmax(1) == y).sum().item()


def train_epoch(net: nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace, num_classes: int,
                device: torch.device, optimizer: torch.optim.Optimizer, g: torch.Generator,
                aug: bool) -> tuple[float, float]:
    """One pass over the shuffled training set; (mean loss, accuracy %)."""
    black = (-torch.tensor(dataloader.CIFAR_MEAN) / torch.tensor(dataloader.CIFAR_STD)).to(device)
    net.train()
    total_loss, hits = 0.0, 0
    for idx in torch.randperm(len(y), generator=g).split(args.batch_size):
        xb, yb = x[idx].to(device), y[idx].to(device)
        if aug:
            xb = augment(xb, g, black.view(1, -1, 1, 1))
        optimizer.zero_grad()
        loss, h = loss_and_hits(net, xb, yb, args.loss_name, num_classes)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(yb)
        hits += h
    return total_loss / len(y), 100.0 * hits / len(y)


@torch.no_grad()
def evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace, num_classes: int,
             device: torch.device) -> tuple[float, float]:
    """Loss and accuracy % in eval mode."""
    net.eval()
    total_loss, hits = 0.0, 0
    for i in range(0, len(y), args.batch_size):
        xb, yb = x[i:i + args.batch_size].to(device), y[i:i + args.batch_size].to(device)
        loss, h = loss_and_hits(net, xb, yb, args.loss_name, num_classes)
        total_loss += loss.item() * len(yb)
        hits += h
    return total_loss / len(y), 100.0 * hits / len(y)


def save_checkpoint(folder: str, epoch: int, acc: float, net: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """model_<epoch>.t7 and opt_state_<epoch>.t7 in the original's format, each written to a
    temporary file and renamed: an interrupted save never leaves half a checkpoint."""
    save_torch({"optimizer": optimizer.state_dict()}, os.path.join(folder, f"opt_state_{epoch}.t7"))
    save_torch({"acc": acc, "epoch": epoch, "state_dict": net.state_dict()}, os.path.join(folder, f"model_{epoch}.t7"))


def run_settings(args: argparse.Namespace, data: dataloader.Data) -> dict[str, Any]:
    """What defines the run (checked when a rerun resumes it): every flag that changes the
    result, and the data by content."""
    flags = {k: v for k, v in sorted(vars(args).items()) if k not in NOT_SETTINGS}
    return dict(SETTINGS_FORMAT, **flags, data=data.name, n_train=len(data.train_y), n_test=len(data.test_y),
                data_hash=dataloader.tensor_hash(data.train_x, data.train_y, data.test_x, data.test_y))


def read_settings(folder: str) -> dict[str, Any] | None:
    """The settings of the run in ``folder`` (None without our marker file)."""
    path = os.path.join(folder, SETTINGS_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            stored = json.load(f)
        return stored if isinstance(stored, dict) else {}
    except (OSError, ValueError):
        return {}


def saved_epochs(folder: str) -> list[int]:
    """Epochs with both model_<e>.t7 and opt_state_<e>.t7 in ``folder``, ascending."""
    names = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    epochs = {int(m.group(1)) for n in names for m in [re.fullmatch(r"model_(\d+)\.t7", n)] if m}
    return sorted(e for e in epochs if f"opt_state_{e}.t7" in names)


def plan_run(folder: str, args: argparse.Namespace, settings: dict[str, Any]) -> int:
    """Where this run starts: 0 (fresh) or the last saved epoch of the same run in ``folder``
    (resume). Refuses a folder with checkpoints this script did not write, or a run with
    other settings, unless --overwrite."""
    if args.overwrite or not os.path.isdir(folder):
        return 0
    checkpoints = sorted(n for n in os.listdir(folder) if re.fullmatch(r"(model|opt_state)_\d+\.t7", n))
    stored = read_settings(folder)
    if stored is None:
        if not checkpoints:
            return 0
        shown = ", ".join(checkpoints[:3]) + (", ..." if len(checkpoints) > 3 else "")
        raise UserError(f"{folder} holds checkpoints that this script did not write ({shown}; no "
                        f"{SETTINGS_FILE}); pass --overwrite to train into it anyway (they are "
                        "replaced) or choose another --save")
    diffs = settings_diff({k: v for k, v in stored.items() if k != "epochs"},
                          {k: v for k, v in settings.items() if k != "epochs"})
    if diffs:
        raise UserError(f"{folder} holds a run with other settings (" + "; ".join(diffs) +
                        "); pass --overwrite to start a new run there or choose another --save")
    stored_epochs = stored.get("epochs")
    done = saved_epochs(folder)
    if stored_epochs != args.epochs and done and done[-1] > 0:
        raise UserError(f"{folder} holds a run of {stored_epochs} epochs (its learning-rate schedule "
                        f"depends on --epochs); pass --epochs {stored_epochs} to resume it, or "
                        "--overwrite to start a new run there")
    return done[-1] if done else 0


def trim_log(folder: str, last_epoch: int) -> None:
    """log.out without the lines of epochs after ``last_epoch`` (an interrupted run's)."""
    path = os.path.join(folder, "log.out")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        lines = f.read().splitlines()
    keep = [line for line in lines if not (m := re.match(r"e: (\d+) ", line)) or int(m.group(1)) <= last_epoch]
    if keep != lines:
        with written_atomically(path) as tmp, open(tmp, "w") as f:
            f.write("".join(line + "\n" for line in keep))


class Stopped(Exception):
    """SIGINT or SIGTERM arrived (raised from the signal handler, in the main thread)."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stop(signum, frame):
    raise Stopped(signum)


def check_args(args: argparse.Namespace) -> None:
    """Every flag that training cannot use: one line, before anything is loaded or written."""
    for flag, low in (("batch_size", 1), ("save_epoch", 1), ("epochs", 0), ("ngpu", 1), ("threads", 0)):
        if getattr(args, flag) < low:
            raise UserError(f"--{flag} must be >= {low}, got {getattr(args, flag)}")
    for flag, positive in (("lr", True), ("momentum", False), ("weight_decay", False),
                           ("lr_decay", True)):
        v = getattr(args, flag)
        if not math.isfinite(v) or v < 0 or (positive and v == 0):
            raise UserError(f"--{flag} must be a finite number {'>' if positive else '>='} 0, "
                            f"got {v}")
    if not 0.0 <= args.label_corrupt_prob <= 1.0:
        raise UserError(f"--label_corrupt_prob must be in [0, 1], got {args.label_corrupt_prob}")
    for flag in ("resume_model", "resume_opt"):
        path = getattr(args, flag)
        if path and not os.path.isfile(path):
            raise UserError(f"--{flag} file not found: {path}")
    if args.resume_opt and not args.resume_model:
        raise UserError("--resume_opt needs --resume_model (the model the optimizer state belongs to)")
    _check_save_root(args.save)


def _check_save_root(path):
    """--save must be a folder, or creatable as one (no file in the way)."""
    p = os.path.abspath(path)
    while not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    if not os.path.isdir(p):
        raise UserError(f"--save {path}: {p} is a file, not a folder; choose another --save")
    if not os.access(p, os.W_OK):
        raise UserError(f"--save {path}: cannot write in {p}; choose another --save")


def _checkpoint_epoch(path):
    """The epoch stored in an original-format checkpoint (0 if it has none)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        return int(ckpt.get("epoch", 0)) if isinstance(ckpt, dict) else 0
    except Exception:
        return 0


def load_optimizer_state(optimizer: torch.optim.Optimizer, path: str, device: torch.device) -> None:
    """--resume_opt: the optimizer state saved with the model; one line if it is damaged or
    belongs to another model or optimizer."""
    hint = "pass the opt_state_<epoch>.t7 saved with --resume_model (same --model and --optimizer)"
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise UserError(f"--resume_opt {path} is damaged or not an optimizer state "
                        f"({first_line(e)[:150]}); {hint}")
    if not isinstance(state, dict) or not isinstance(state.get("optimizer"), dict):
        raise UserError(f"--resume_opt {path} holds no {{'optimizer': ...}} state; {hint}")
    try:
        optimizer.load_state_dict(state["optimizer"])
    except Exception as e:
        raise UserError(f"--resume_opt {path} does not hold this model's optimizer state "
                        f"({first_line(e)[:150]}); {hint}")
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, buf in optimizer.state.get(p, {}).items():
                if torch.is_tensor(buf) and buf.dim() > 0 and buf.shape != p.shape:
                    raise UserError(f"--resume_opt {path}: its {key} of shape {tuple(buf.shape)} "
                                    f"does not fit a parameter of shape {tuple(p.shape)}; {hint}")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    check_args(args)
    state = {"folder": None, "epoch": None}   # what an interruption reports
    old = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        train(args, state)
    except (Stopped, KeyboardInterrupt) as e:
        signum = e.signum if isinstance(e, Stopped) else signal.SIGINT
        signal.signal(signum, signal.SIG_IGN)  # a second one while we say so
        folder, done = state["folder"], saved_epochs(state["folder"] or "")
        where = f" in epoch {state['epoch']}" if state["epoch"] is not None else ""
        if not done:
            hint = "rerun the same command to start again"
        else:
            hint = (f"rerun the same command{' without --resume_model/--resume_opt' if args.resume_model else ''} "
                    f"to resume from epoch {done[-1]} (model_{done[-1]}.t7 in {folder})")
        print(f"interrupted by {signal.Signals(signum).name}{where}: {hint}", file=sys.stderr, flush=True)
        sys.exit(128 + signum)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def train(args: argparse.Namespace, state: dict[str, Any]) -> None:
    """The run: data, folder (new, resumed or refused), model, optimizer, epochs; ``state``
    follows the folder and the epoch in progress."""
    device, threads = _device_and_seeds(args)
    data = _training_data(args)

    # The run's folder: a new run, the rest of an interrupted one, or refused
    folder = os.path.join(args.save, name_save_folder(args))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"{folder} is a file, not a folder; move it or choose another --save")
    settings = run_settings(args, data)
    last = plan_run(folder, args, settings)
    if args.resume_model:  # an explicit checkpoint wins over the folder's last one
        last = 0
    elif last >= args.epochs > 0 or (last and args.epochs == 0):
        print(f"nothing to do: {folder} holds this run up to epoch {last} (--epochs {args.epochs}); "
              "pass --overwrite to train it again", flush=True)
        return

    # Model: resumed from a checkpoint, or fresh with the original's initialization
    resume_model, resume_opt = args.resume_model, args.resume_opt
    if last:
        resume_model = os.path.join(folder, f"model_{last}.t7")
        resume_opt = os.path.join(folder, f"opt_state_{last}.t7")
    net, start_epoch = _model(args, resume_model, data, device)
    model = nn.DataParallel(net, device_ids=list(range(args.ngpu))) if args.ngpu > 1 else net
    optimizer = _optimizer(args, net, resume_opt, device)

    os.makedirs(folder, exist_ok=True)
    state["folder"] = folder
    trim_log(folder, start_epoch - 1 if resume_model else -1)
    with written_atomically(os.path.join(folder, SETTINGS_FILE)) as tmp, open(tmp, "w") as f:
        json.dump(settings, f, indent=1)
    where = (f"resuming after epoch {last} of {args.epochs}" if last else
             f"from {resume_model}" if resume_model else f"{args.epochs} epochs")
    print(f"training {args.model} on {data.name} ({len(data.train_y)} train / "
          f"{len(data.test_y)} test images, {threads} thread{'s' if threads > 1 else ''}), {where}, "
          f"into {folder}", flush=True)
    if args.label_corrupt_prob > 0 and not os.path.exists(os.path.join(folder, "trainloader.t7")):
        # the training set as trained on, for plot_surface.py --trainloader
        save_torch({"x": data.train_x, "y": data.train_y}, os.path.join(folder, "trainloader.t7"))
    _run_epochs(args, state, folder, data, net, model, optimizer, start_epoch, device)
    if resume_model and start_epoch > args.epochs:
        print(f"nothing to do: the checkpoint is at epoch {start_epoch - 1}, --epochs is "
              f"{args.epochs}", flush=True)


def _device_and_seeds(args):
    """(device, threads) of the run, after checking --cuda/--ngpu; seeds every generator."""
    if args.cuda and not torch.cuda.is_available():
        raise UserError("--cuda given but no CUDA GPU is available; drop --cuda to train on the CPU")
    if args.ngpu > 1 and (not args.cuda or args.ngpu > torch.cuda.device_count()):
        raise UserError(f"--ngpu {args.ngpu} needs --cuda and {args.ngpu} visible GPUs")
    threads = grid.set_threads(args.threads, None)
    device = torch.device("cuda" if args.cuda else "cpu")
    torch.backends.cudnn.benchmark = args.cuda  # as the original

    random.seed(args.rand_seed)
    np.random.seed(args.rand_seed)
    torch.manual_seed(args.rand_seed)
    return device, threads


def _training_data(args):
    """The data, with corrupted training labels if asked."""
    data = dataloader.load_data(args)
    if len(data.train_y) == 0 or len(data.test_y) == 0:
        raise UserError(f"the {data.name} data have an empty train or test split; "
                        "check --max_samples/--data_split")
    if args.label_corrupt_prob > 0:
        if data.num_classes < 2:
            raise UserError(f"--label_corrupt_prob needs at least 2 classes; {data.name} has "
                            f"{data.num_classes}")
        data.train_y = corrupt_labels(data.train_y, args.label_corrupt_prob, data.num_classes,
                                      args.rand_seed)
    return data


def _model(args, resume_model, data, device):
    """(net on ``device``, first epoch to train): resumed from ``resume_model``, or fresh
    with the original's initialization; checked against the data."""
    start_epoch = 1
    if resume_model:
        net = model_loader.load(args.model, resume_model)
        start_epoch = _checkpoint_epoch(resume_model) + 1
    else:
        net = model_loader.build_model(args.model)
        init_params(net)
    model_loader.check_fits(net, data, args.model)
    net.to(device)
    return net, start_epoch


def _optimizer(args, net, resume_opt, device):
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum,
                                    weight_decay=args.weight_decay, nesterov=args.momentum > 0)
    else:
        optimizer = torch.optim.Adam(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    if resume_opt:
        load_optimizer_state(optimizer, resume_opt, device)
    return optimizer


def _run_epochs(args, state, folder, data, net, model, optimizer, start_epoch, device):
    """Train from ``start_epoch`` to --epochs (epoch 0: the initial model, evaluated only),
    recording each epoch in log.out and saving the checkpoints."""
    aug = data.name == "cifar10" and not args.noaug and not args.raw_data
    n_classes = data.num_classes
    with open(os.path.join(folder, "log.out"), "a") as log:
        def record(epoch, train_loss, train_acc, test_loss, test_acc, seconds):
            line = (f"e: {epoch} train_loss: {train_loss:.5f} train_acc: {train_acc:.3f} "
                    f"test_loss: {test_loss:.5f} test_acc: {test_acc:.3f} "
                    f"lr: {optimizer.param_groups[0]['lr']:g} time: {seconds:.2f}s")
            print(line, flush=True)
            log.write(line + "\n")
            log.flush()

        if start_epoch == 1:  # the initial model, as the original records it
            state["epoch"] = 0
            t = time.time()
            train_loss, train_acc = evaluate(model, data.train_x, data.train_y, args, n_classes, device)
            test_loss, test_acc = evaluate(model, data.test_x, data.test_y, args, n_classes, device)
            record(0, train_loss, train_acc, test_loss, test_acc, time.time() - t)
            save_checkpoint(folder, 0, test_acc, net, optimizer)

        g = torch.Generator()
        for epoch in range(start_epoch, args.epochs + 1):
            state["epoch"] = epoch
            t = time.time()
            g.manual_seed(args.rand_seed * 1000003 + epoch)  # a resumed run shuffles the same way
            torch.manual_seed(args.rand_seed * 1000003 + epoch)  # and drops out the same way
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch, args)
            train_loss, train_acc = train_epoch(model, data.train_x, data.train_y, args, n_classes,
                                                device, optimizer, g, aug)
            test_loss, test_acc = evaluate(model, data.test_x, data.test_y, args, n_classes, device)
            record(epoch, train_loss, train_acc, test_loss, test_acc, time.time() - t)
            if epoch == 1 or epoch % args.save_epoch == 0 or epoch == args.epochs:
                save_checkpoint(folder, epoch, test_acc, net, optimizer)


if __name__ == "__main__":
    run_main(main)
