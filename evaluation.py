"""Exact loss and accuracy of a model over a whole evaluation set, fast.

The data set is moved to the device once; each evaluation runs large batches under
``torch.inference_mode`` with the model in eval mode, accumulates the summed loss and
the number of correct predictions on the device, and reads them back once: no host
synchronisation per batch. The result is the exact mean per-sample loss and the
accuracy in percent.

Losses (``--loss_name``): ``crossentropy``; ``mse`` (as the original: mean over classes
of (softmax(output) - one_hot(target))^2, per sample); or ``package.module:function``,
``function(outputs, targets)`` returning per-sample losses (shape (B,)) or their batch
mean (a scalar, multiplied back by the batch size).

``--precision``: ``fp32`` (default, exact), ``tf32`` (TensorFloat-32 matmuls and
convolutions on NVIDIA GPUs; no effect on the CPU), ``bf16`` (autocast to bfloat16).
"""
import contextlib
import ctypes
import sys

import torch
import torch.nn.functional as F

from dataloader import import_object
from errors import UserError

PRECISIONS = ("fp32", "tf32", "bf16")


def keep_freed_memory():
    """Stop glibc from returning activation buffers to the OS after every layer.

    With its default settings glibc serves each large tensor with a fresh mmap and
    unmaps it when freed, so every layer of every batch pays page faults to zero new
    pages; a CPU evaluation of ResNet-56 runs 1.3-1.6x faster once freed memory is kept
    for reuse (doc/benchmarks.md). No effect off glibc; GPU memory has its own cache.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30))


def get_loss_fn(name):
    """A function (outputs, targets) -> summed loss of the batch (a 0-d tensor)."""
    if name == "crossentropy":
        return lambda out, y: F.cross_entropy(out, y, reduction="sum")
    if name == "mse":
        def mse(out, y):
            onehot = F.one_hot(y, out.shape[1]).to(out.dtype)
            return (F.softmax(out, dim=1) - onehot).pow(2).mean(dim=1).sum()
        return mse
    if ":" in name:
        fn = import_object(name, "--loss_name")

        def custom(out, y):
            loss = fn(out, y)
            return loss.sum() if loss.dim() > 0 else loss * len(y)
        return custom
    raise UserError(f"unknown --loss_name '{name}'; use crossentropy, mse or "
                    "package.module:function")


@contextlib.contextmanager
def precision_mode(precision, device):
    """Numerics for ``fp32``/``tf32``/``bf16`` evaluation."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown --precision '{precision}'; use {', '.join(PRECISIONS)}")
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        if precision == "bf16":
            with torch.autocast(device.type, dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


class Evaluator:
    """``evaluator()`` -> (mean loss, accuracy %) of ``net`` on (x, y), exactly."""

    def __init__(self, net, x, y, loss_fn, batch_size, device, precision="fp32"):
        if len(y) == 0:
            raise UserError("the evaluation set is empty; check --max_samples/--data_split")
        self.net = net.to(device).eval()
        self.x = x.to(device)
        self.y = y.to(device)
        self.loss_fn = loss_fn
        self.batch_size = max(1, int(batch_size))
        self.device = device
        self.precision = precision

    def __call__(self):
        n = len(self.y)
        with torch.inference_mode(), precision_mode(self.precision, self.device):
            loss = torch.zeros((), dtype=torch.float64, device=self.device)
            correct = torch.zeros((), dtype=torch.int64, device=self.device)
            for i in range(0, n, self.batch_size):
                xb, yb = self.x[i:i + self.batch_size], self.y[i:i + self.batch_size]
                out = self.net(xb)
                loss += self.loss_fn(out.float(), yb).double()
                correct += (out.argmax(dim=1) == yb).sum()
            loss, correct = loss.item(), correct.item()
        return loss / n, 100.0 * correct / n
