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
from __future__ import annotations

import contextlib
import ctypes
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torch.nn.functional as F

from errors import UserError
from evaluation_options import ENGINES, PRECISIONS, check_engine, check_precision  # noqa: F401 -- owned here
from inference import FusedModel, named_state
from lm import logits_of, next_token_hits, next_token_loss, prediction_count
from plugins import import_object

if TYPE_CHECKING:
    from net_plotter import Perturbation

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def keep_freed_memory() -> bool:
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


def _check_outputs(out, y, name):
    """The built-in losses need (batch, classes) outputs and labels below the class count,
    or (batch, tokens, vocabulary) logits of windows labelled by their tokens."""
    if torch.is_tensor(out) and out.dim() == 3 and y.dim() == 2 and out.shape[:2] == y.shape:
        return
    if not torch.is_tensor(out):
        raise UserError(f"the model returned {type(out).__name__}, not a tensor of shape "
                        "(batch, classes); --loss_name " + name + " needs logits")
    if out.dim() != 2 or out.shape[0] != len(y):
        raise UserError(f"--loss_name {name} needs model outputs of shape (batch, classes); the "
                        f"model returned shape {tuple(out.shape)} for a batch of {len(y)}")


def get_loss_fn(name: str) -> LossFn:
    """A function (outputs, targets) -> summed loss of the batch (a 0-d tensor).

    Built-ins check the output shape (batch, classes); a custom function must return
    per-sample losses (shape (B,)) or their batch mean (0-d): anything else, or an
    exception inside it, is a one-line ``UserError`` naming the function.
    """
    if name == "crossentropy":
        def crossentropy(out, y):
            _check_outputs(out, y, name)
            if y.dim() == 2:  # windows of tokens: next-token prediction (lm.py)
                return next_token_loss(out, y)
            return F.cross_entropy(out, y, reduction="sum")
        crossentropy.needs_classes, crossentropy.loss_name = True, name
        return crossentropy
    if name == "mse":
        def mse(out, y):
            _check_outputs(out, y, name)
            if y.dim() == 2:
                raise UserError("--loss_name mse is for classifiers; use crossentropy for language models")
            onehot = F.one_hot(y, out.shape[1]).to(out.dtype)
            return (F.softmax(out, dim=1) - onehot).pow(2).mean(dim=1).sum()
        mse.needs_classes, mse.loss_name = True, name
        return mse
    if ":" in name:
        return summed_loss(import_object(name, "--loss_name"), name)
    raise UserError(f"unknown --loss_name '{name}'; use crossentropy, mse or "
                    "package.module:function")


def summed_loss(fn: Callable[..., object], name: str) -> LossFn:
    """The batch's summed loss from ``fn(outputs, targets)``, which must return per-sample
    losses (shape (B,)) or their batch mean (0-d); anything else is a one-line UserError."""
    def custom(out, y):
        loss = fn(out, y)
        if not torch.is_tensor(loss):
            raise UserError(f"--loss_name {name} returned {type(loss).__name__}; it must "
                            f"return a tensor of per-sample losses (shape ({len(y)},)) or "
                            "their batch mean (a 0-d tensor)")
        if loss.dim() == 0:
            return loss * len(y)
        if tuple(loss.shape) != (len(y),):
            raise UserError(f"--loss_name {name} returned shape {tuple(loss.shape)} for a "
                            f"batch of {len(y)}; it must return per-sample losses (shape "
                            f"({len(y)},)) or their batch mean (a 0-d tensor)")
        return loss.sum()
    custom.loss_name = name
    return custom


@contextlib.contextmanager
def precision_mode(precision: str, device: torch.device) -> Iterator[None]:
    """Numerics for ``fp32``/``tf32``/``bf16`` evaluation."""
    check_precision(precision)
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


# How far the compiled graph may differ from the uncompiled one on a probe batch (relative to
# the largest output): fp32 catches a wrong graph; tf32 and bf16 round at other places once
# the compiler fuses operations, so only a gross error is caught there.
COMPILE_TOL = {"fp32": 1e-4, "tf32": 1e-2, "bf16": 5e-2}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn: Callable[[], object], device: torch.device, reps: int = 3) -> float:
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


class Evaluator:
    """``evaluator()`` -> (mean loss, accuracy %) of ``net`` on (x, y), exactly.

    ``engine`` (``ENGINES``): ``eager`` runs ``net`` as it is; ``fused`` runs
    ``inference.FusedModel`` (BatchNorm folded into the preceding conv/linear layer,
    refolded from the current weights at every call, channels_last for image batches);
    ``compiled`` is the fused model under ``torch.compile`` (full batches; minutes of
    compilation on a CPU, reused for every point); ``auto`` is ``fused`` (the same fixed
    choice on every rank and every rerun, so results are reproducible bit for bit). Any
    model works: where nothing folds, or the model does not trace, or the fused output
    differs from eager on a probe batch, the evaluator runs eager. ``path`` says what
    runs, e.g. ``fused (56 conv+bn folded), channels_last``.

    ``evaluate_points(perturb, points)`` evaluates several grid points in one pass
    (stacked weights under ``torch.func.vmap``); ``probe_points_per_pass`` picks how many.
    """

    def __init__(self, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                 loss_fn: Callable, batch_size: int, device: torch.device,
                 precision: str = "fp32", engine: str = "auto"):
        if len(y) == 0:
            raise UserError("the evaluation set is empty; check --max_samples/--data_split")
        check_engine(engine)
        check_precision(precision)
        self.net = net.to(device).eval()
        self.x = x.to(device)
        self.y = y.to(device)
        self.loss_fn = loss_fn
        self.batch_size = max(1, int(batch_size))
        self.device = device
        self.precision = precision
        self.engine = engine
        self.path = "eager"
        self.compile_seconds = 0.0
        self.setup_seconds = 0.0
        self._fused = None
        self._compiled = None
        self._vmap_state = None
        self.count = prediction_count(self.y)  # samples, or next-token predictions of windows
        t0 = time.perf_counter()
        example = self._check_model()
        if engine != "eager" and not self.x.is_floating_point():  # token ids: a language model
            self.path = "eager (token inputs)"
        elif engine != "eager":
            self._choose(engine, example)
        self._xin = self._fused.prepare_input(self.x) if self._fused else self.x  # same values
        self.setup_seconds = time.perf_counter() - t0

    # --------------------------------------------------------------- set-up
    def _check_model(self) -> torch.Tensor:
        """One small batch through the model and the loss: bad outputs are one-line errors."""
        example = self.x[:min(8, len(self.x))]
        yb = self.y[:len(example)]
        with torch.inference_mode(), precision_mode(self.precision, self.device):
            out = logits_of(self.net(example))
            if not torch.is_tensor(out):
                raise UserError(f"the model returned {type(out).__name__}, not a tensor of shape "
                                "(batch, classes)")
            if getattr(self.loss_fn, "needs_classes", False) and out.dim() == 2:
                lo, hi = int(self.y.min()), int(self.y.max())
                if lo < 0 or hi >= out.shape[1]:
                    raise UserError(f"the labels run from {lo} to {hi} but the model has "
                                    f"{out.shape[1]} outputs; use a model with more classes or "
                                    "another --dataset")
            try:
                self.loss_fn(out.float(), yb)
            except UserError:
                raise
            except Exception as e:  # here, on the first batch; later a failure aborts the run
                msg = str(e).strip().splitlines()
                name = getattr(self.loss_fn, "loss_name", getattr(self.loss_fn, "__name__", "loss"))
                raise UserError(f"--loss_name {name} raised {type(e).__name__}"
                                f"{': ' + msg[0][:200] if msg else ''}")
        return example

    def _choose(self, engine: str, example: torch.Tensor) -> None:
        fused = FusedModel(self.net, example)
        self.path = fused.describe()
        if not fused.fused:
            if engine == "compiled":
                self._compile(self.net)
            return
        if not self._agrees(fused, example):
            self.path = "eager (fused output differs from eager on a probe batch)"
            return
        # A fixed rule, not a timing probe: every rank and every rerun must take the same
        # path, so that 2 ranks equal 1 and a resumed file equals an uninterrupted one bit
        # for bit. channels_last for image batches: faster for every zoo model measured
        # (doc/engine.md), and the fold was no slower than eager on any of them.
        fused.set_channels_last(self.x.dim() == 4)
        fused.refresh()
        self._fused = fused
        self.path = fused.describe()
        if engine == "compiled":
            self._compile(fused.gm)

    def _agrees(self, fused: FusedModel, example: torch.Tensor) -> bool:
        # in exact fp32 whatever --precision: PyTorch lets cuDNN use TF32 by default, and two
        # TF32 evaluations of a deep network differ by more than this test's 1e-4
        with torch.inference_mode(), precision_mode("fp32", self.device):
            a, b = self.net(example).double(), fused(example).double()
        scale = max(1.0, a.abs().max().item())
        return bool(torch.isfinite(b).all()) and (a - b).abs().max().item() <= 1e-4 * scale

    def _compile(self, module: torch.nn.Module) -> None:
        t = time.perf_counter()
        try:
            compiled = torch.compile(module, dynamic=False)
            xb = self.x[:min(self.batch_size, len(self.x))]
            if self._fused:
                xb = self._fused.prepare_input(xb)
            with torch.inference_mode(), precision_mode(self.precision, self.device):
                ref = module(xb).double()
                got = compiled(xb).double()
            if (ref - got).abs().max().item() > COMPILE_TOL[self.precision] * max(1.0, ref.abs().max().item()):
                self.path += "; not compiled (compiled output differs)"
                return
        except Exception as e:  # no compiler, unsupported op: stay uncompiled
            self.path += f"; not compiled ({type(e).__name__})"
            return
        self._compiled = compiled
        self.compile_seconds = time.perf_counter() - t
        self.path += f", compiled ({self.compile_seconds:.0f} s)"

    # ------------------------------------------------------------ one point
    def _model_for(self, n_rows: int) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.net.training:  # someone put the net back in training mode: run it as it is
            return self.net
        if self._compiled is not None and n_rows == min(self.batch_size, len(self.x)):
            return self._compiled
        return self._fused if self._fused is not None else self.net

    def __call__(self) -> tuple[float, float]:
        if self._fused is not None and not self.net.training:
            self._fused.refresh()
        n = len(self.y)
        with torch.inference_mode(), precision_mode(self.precision, self.device):
            loss = torch.zeros((), dtype=torch.float64, device=self.device)
            correct = torch.zeros((), dtype=torch.int64, device=self.device)
            for i in range(0, n, self.batch_size):
                xb, yb = self._xin[i:i + self.batch_size], self.y[i:i + self.batch_size]
                out = logits_of(self._model_for(len(xb))(xb))
                loss += self.loss_fn(out.float(), yb).double()
                correct += _hits(out, yb)
            loss, correct = loss.item(), correct.item()
        return loss / self.count, 100.0 * correct / self.count

    # -------------------------------------------------------- several points
    def _names_of(self, perturb) -> list[str] | None:
        """The net's entry name of each of ``perturb``'s targets (None: not all found)."""
        where = {(t.data_ptr(), tuple(t.shape)): n for n, t in named_state(self.net).items()}
        names = [where.get((t.data_ptr(), tuple(t.shape))) for t in perturb.targets]
        return None if any(n is None for n in names) else names

    def _stacked_params(self, perturb, points) -> dict[str, torch.Tensor] | None:
        """{name in the evaluated module: (K, ...) tensor} for the K points."""
        if self._vmap_state is None or self._vmap_state[0] is not perturb:
            self._vmap_state = (perturb, self._names_of(perturb))
        names = self._vmap_state[1]
        if names is None:
            return None
        stacks = dict(zip(names, perturb.stacked(points)))
        if self._fused is None:
            return stacks
        k = len(points)
        live = named_state(self.net)
        folded = self._fused.folded_names()
        inputs = {n: stacks[n] if n in stacks else live[n].expand(k, *live[n].shape)
                  for n in folded if n in live and live[n].is_floating_point()}
        params = torch.func.vmap(lambda s: self._fused.folded_params(s.__getitem__))(inputs)
        params.update({n: t for n, t in stacks.items() if n not in folded})
        return params

    def _run_points(self, params: dict[str, torch.Tensor], k: int, rows: int | None = None):
        module = self._fused.gm if self._fused is not None else self.net

        def forward(p, xb):
            return torch.func.functional_call(module, p, (xb,))
        batched = torch.func.vmap(forward, in_dims=(0, None))
        n = len(self.y) if rows is None else min(rows, len(self.y))
        count = self.count if n == len(self.y) else prediction_count(self.y[:n])
        with torch.inference_mode(), precision_mode(self.precision, self.device):
            loss = torch.zeros(k, dtype=torch.float64, device=self.device)
            correct = torch.zeros(k, dtype=torch.int64, device=self.device)
            for i in range(0, n, self.batch_size):
                xb, yb = self._xin[i:min(i + self.batch_size, n)], self.y[i:min(i + self.batch_size, n)]
                out = logits_of(batched(params, xb))
                for j in range(k):
                    loss[j] += self.loss_fn(out[j].float(), yb).double()
                    correct[j] += _hits(out[j], yb)
            loss, correct = loss.tolist(), correct.tolist()
        return [(a / count, 100.0 * c / count) for a, c in zip(loss, correct)]

    def evaluate_points(self, perturb: Perturbation,
                        points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
        """[(mean loss, accuracy %)] at each grid point (x, y) of ``points``, in order.

        ``perturb`` is the ``net_plotter.Perturbation`` that moves this evaluator's net.
        Several points run in one pass (stacked weights, torch.func.vmap over
        functional_call); equal to ``perturb.set(x, y); evaluator()`` one point at a
        time within 1e-6, and one at a time wherever stacking does not apply. The net is
        left at the last point."""
        points = [(float(p[0]), float(p[1] or 0.0)) for p in points]
        if not points:
            return []
        params = None
        if len(points) > 1 and getattr(self, "_vmap_ok", True):
            with torch.no_grad():
                try:
                    params = self._stacked_params(perturb, points)
                except Exception:
                    params = None
        if params is None:
            out = []
            for p in points:
                perturb.set(*p)
                out.append(self())
            return out
        try:
            out = self._run_points(params, len(points))
        except UserError:
            raise
        except Exception:  # an operation without a vmap rule: one point at a time, for good
            self._vmap_ok = False
            return self.evaluate_points(perturb, points)
        perturb.set(*points[-1])
        return out

    def probe_points_per_pass(self, perturb: Perturbation, candidates: Sequence[int] = (1, 4, 16),
                              min_gain: float = 1.15) -> int:
        """The number of points per pass that evaluates fastest on one batch (1 when
        stacking does not pay by at least ``min_gain``, or does not apply)."""
        rows = min(self.batch_size, len(self.y))
        best_k, best_t = 1, None
        saved = [t.clone() for t in perturb.targets]
        try:
            for k in sorted(set(int(c) for c in candidates)):
                pts = [(0.01 * j, 0.0) for j in range(k)]
                if k == 1:
                    fn = self._probe_one(rows)
                else:
                    with torch.no_grad():
                        try:
                            params = self._stacked_params(perturb, pts)
                        except Exception:
                            params = None
                    if params is None:
                        break

                    def fn(params=params, k=k):
                        return self._run_points(params, k, rows)
                try:
                    fn()
                    t = _best_time(fn, self.device, reps=2) / k
                except (RuntimeError, NotImplementedError, MemoryError):  # incl. CUDA out of memory
                    break
                if best_t is None:
                    best_t = t
                elif t * min_gain < best_t:
                    best_k, best_t = k, t
        finally:
            with torch.no_grad():
                torch._foreach_copy_(perturb.targets, saved)
        return best_k

    def _probe_one(self, rows: int) -> Callable[[], object]:
        def fn():
            if self._fused is not None:
                self._fused.refresh()
            with torch.inference_mode(), precision_mode(self.precision, self.device):
                xb = self._xin[:rows]
                out = logits_of(self._model_for(len(xb))(xb))
                return self.loss_fn(out.float(), self.y[:rows]).item()
        return fn


def _hits(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Correct predictions in a batch (0 where the output is not (batch, classes)); for
    windows of tokens, the next tokens predicted."""
    if out.dim() == 3 and y.dim() == 2 and out.shape[:2] == y.shape:
        return next_token_hits(out, y)
    if out.dim() != 2 or out.shape[0] != len(y):
        return torch.zeros((), dtype=torch.int64, device=y.device)
    return (out.argmax(dim=1) == y).sum()
