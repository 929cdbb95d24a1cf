"""The Hessian of the mean loss: Hessian-vector products, extreme eigenvalues, the
top of the spectrum and a trace estimate.

The Hessian is that of L(θ) = (1/N) Σ_n loss(f(x_n; θ), y_n), the mean per-sample loss
over the whole evaluation set, with respect to the parameters with more than one
dimension (conv and linear weights; biases and BatchNorm parameters are held fixed,
as in the original code), the model in eval mode.

Products H·v use double backpropagation: for each batch, g = ∂(Σ_batch loss)/∂θ with
``create_graph``, then ∂(g·v)/∂θ; the batch products are summed in float64 and divided
by N. The result is therefore the same for every batch size (the original summed the
products of per-batch *mean* losses, which scales the Hessian by the number of batches).

Eigenvalues come from ARPACK's implicitly restarted Lanczos method
(``scipy.sparse.linalg.eigsh``) on a float64 ``LinearOperator``; the Lanczos vectors are
float64, each product is computed in the parameters' dtype and accumulated in float64.
The start vector is a fixed Gaussian vector (``seed``), so a grid point gives the same
numbers on any rank. ``min_max_eigs`` finds the eigenvalue of largest magnitude first
(the spectral radius ρ: λmax or λmin, whichever is larger in size), then the other end
of the spectrum with the operator shifted by it (H − λ₁I), which keeps the sign of all
its eigenvalues and so finds the right end for positive definite, indefinite and
negative-dominant spectra alike (the original shifted by 0.51·λmax and asked for the
largest magnitude, which returns λmax again for a well-conditioned positive definite
Hessian).

Tolerances: ARPACK stops when each Ritz value θ has a residual norm below ``tol``·|θ|
on the operator it runs on, and for a symmetric operator an eigenvalue then lies within
that distance of θ. So λ₁ is within ``tol``·ρ of an eigenvalue and the other end within
``tol``·(λmax − λmin) ≤ 2·``tol``·ρ; in practice far closer (the eigenvalue error of
Lanczos is of the order of the squared residual over the gap to the next eigenvalue).
Default ``tol=1e-3``.
"""
import sys
import time
import warnings
from typing import Callable

import numpy as np
import torch
from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigsh

from errors import UserError
from hessian_options import DEFAULT_BATCH_MB, DEFAULT_CACHE_MB, DEFAULT_TOL  # noqa: F401 -- owned here, light for the flags


def hessian_params(net: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """[(name, parameter)] the Hessian is taken with respect to: those with > 1 dimension
    (of the wrapped model for a ``DataParallel``-like wrapper with ``.module``)."""
    model = net.module if hasattr(net, "module") else net
    return [(n, p) for n, p in model.named_parameters() if p.dim() > 1]


def _saved_bytes(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_sum: Callable,
                 params: list) -> tuple[tuple, int]:
    """The gradient of the summed loss of (x, y) with its graph, and the bytes of the
    tensors that graph saves (activations and the double-backward graph)."""
    held = [0]

    def pack(t):
        held[0] += t.numel() * t.element_size()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_sum(net(x), y)
        if not loss.requires_grad:
            name = getattr(loss_sum, "loss_name", "")
            raise NotDifferentiable(f"the loss{' ' + name if name else ''} has no gradient with respect to "
                                    "the parameters (not differentiable, e.g. a 0-1 loss): the Hessian "
                                    "needs a differentiable loss")
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    return grads, held[0]


def auto_batch(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_sum: Callable,
               params: list, batch_mb: float = DEFAULT_BATCH_MB, probe: int = 32) -> int:
    """The batch for Hessian-vector products chosen by memory: the largest whose gradient
    graph (the tensors saved by the forward pass and the first backward pass) fits in
    ``batch_mb`` MiB, estimated linearly from one probe batch of ``probe`` samples, at
    least 1 and at most the data size. Fewer, larger batches cost fewer passes through
    the Python layers and the same arithmetic, and the summed products do not depend on
    the batch (up to float rounding)."""
    n = len(y)
    m = max(1, min(int(probe), n))
    _, nbytes = _saved_bytes(net, x[:m], y[:m], loss_sum, params)
    per_sample = max(nbytes / m, 1.0)
    return int(max(1, min(n, batch_mb * 2 ** 20 // per_sample)))


class Hessian(LinearOperator):
    """H of the mean loss of ``net`` over (x, y), as a symmetric float64 LinearOperator.

    Build it with ``hessian_operator`` (the one way the scripts do). ``loss_sum(outputs,
    targets)`` returns the summed loss of a batch (a 0-d tensor), as
    ``evaluation.get_loss_fn`` gives it. ``params`` defaults to ``hessian_params(net)``.
    ``count`` counts the products.

    Graph cache: the forward pass and the first backward pass (the gradient with its
    graph) are the same for every product at one point, so the gradient graphs of the
    first batches are kept, up to ``cache_mb`` MiB of saved tensors, and each product
    then costs only the second backward pass of those batches (about half the time).
    The cache is dropped whenever the model's parameters or buffers change, so one
    operator follows a model that is moved between products.
    """

    def __init__(self, net, x, y, loss_sum, batch_size, params=None, cache_mb=DEFAULT_CACHE_MB):
        self.net = net.eval()
        self.params = [p for _, p in hessian_params(net)] if params is None else list(params)
        if not self.params:
            raise NoParameters("no parameters to take the Hessian with respect to")
        for p in self.params:
            p.requires_grad_(True)
        self.x, self.y = x, y
        self.loss_sum = loss_sum
        self.batch_size = max(1, int(batch_size))
        self.sizes = [p.numel() for p in self.params]
        self.budget = cache_mb * 2 ** 20
        self.count = 0
        self.on_product = None  # called with the product count after each product (progress)
        self._drop_cache()
        n = sum(self.sizes)
        super().__init__(np.float64, (n, n))

    def _drop_cache(self):
        self.cache, self.cache_bytes, self.cache_full, self.state = [], 0, False, None

    def _check_cache(self):
        """Drop the cached graphs if the model has moved since they were made."""
        state = [*self.net.parameters(), *self.net.buffers()]  # cheaper than state_dict()
        if self.state is None or len(state) != len(self.state) or \
                not all(torch.equal(a, b) for a, b in zip(state, self.state)):
            self._drop_cache()
            self.state = [t.detach().clone() for t in state]

    def _gradient(self, i):
        """Gradient of batch i's summed loss, with its graph; and the bytes it holds."""
        xb, yb = self.x[i:i + self.batch_size], self.y[i:i + self.batch_size]
        return _saved_bytes(self.net, xb, yb, self.loss_sum, self.params)

    def _batch_gradient(self, b, i):
        """(gradient with graph, kept in the cache?) of batch b starting at sample i."""
        if b < len(self.cache):
            return self.cache[b], True
        grads, nbytes = self._gradient(i)
        if not self.cache_full and b == len(self.cache) and self.cache_bytes + nbytes <= self.budget:
            self.cache.append(grads)
            self.cache_bytes += nbytes
            return grads, True
        self.cache_full = True
        return grads, False

    def _matvec(self, v):
        self._check_cache()
        p0 = self.params[0]
        v = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape(-1)).to(p0.device, p0.dtype)
        vs = [c.view_as(p).to(p.dtype) for c, p in zip(v.split(self.sizes), self.params)]
        out = None
        for b, i in enumerate(range(0, len(self.y), self.batch_size)):
            grads, cached = self._batch_gradient(b, i)
            used = [(g, u) for g, u in zip(grads, vs) if g is not None and g.requires_grad]
            if not used:
                continue  # the gradient does not depend on θ here: H = 0
            with torch.enable_grad():
                hv = torch.autograd.grad([g for g, _ in used], self.params, [u for _, u in used],
                                         retain_graph=cached, allow_unused=True, materialize_grads=True)
            part = torch.cat([h.reshape(-1) for h in hv]).double()
            out = part if out is None else out.add_(part)
        self.count += 1
        if self.on_product is not None:
            self.on_product(self.count)
        if out is None:
            return np.zeros(self.shape[0])
        return out.div_(len(self.y)).cpu().numpy()

    def _rmatvec(self, v):
        return self._matvec(v)


def hessian_operator(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str | Callable,
                     batch_size: int | None = None, params: list | None = None,
                     cache_mb: float = DEFAULT_CACHE_MB, batch_mb: float = DEFAULT_BATCH_MB) -> Hessian:
    """The one way to build the Hessian of the mean loss of ``net`` over (x, y).

    ``loss``: a loss name of ``evaluation.get_loss_fn`` or a summed-loss callable;
    ``params``: default ``hessian_params(net)`` (raises ``NoParameters`` if there are none);
    ``batch_size``: samples per product batch, default chosen by memory (``auto_batch``
    with ``batch_mb``). Raises ``NotDifferentiable`` if the loss has no graph. The model
    is put in eval mode (BatchNorm uses its running statistics, so a batch of one sample
    is as good as any other).
    """
    from evaluation import get_loss_fn
    loss_sum = get_loss_fn(loss) if isinstance(loss, str) else loss
    net = net.eval()
    params = [p for _, p in hessian_params(net)] if params is None else list(params)
    if not params:
        raise NoParameters("the model has no parameter with more than one dimension (conv or linear "
                           "weight): there is no Hessian to take")
    for p in params:
        p.requires_grad_(True)
    if batch_size is None:
        batch_size = auto_batch(net, x, y, loss_sum, params, batch_mb)
    else:
        _saved_bytes(net, x[:1], y[:1], loss_sum, params)  # refuse a loss without a graph now
    return Hessian(net, x, y, loss_sum, batch_size, params, cache_mb)


def start_vector(n: int, seed: int = 0) -> np.ndarray:
    """The fixed float64 start vector of every Lanczos run (same on every rank)."""
    return np.random.default_rng(seed).standard_normal(n)


class NonFinite(ArithmeticError):
    """A Hessian-vector product held NaN or inf (the loss is not finite there)."""


class NotDifferentiable(UserError):
    """The loss has no gradient graph (e.g. a 0-1 loss): it has no Hessian."""


class NoParameters(UserError):
    """No parameter to take the Hessian with respect to."""


def _checked(op: LinearOperator, shift: float = 0.0) -> LinearOperator:
    """``op`` − ``shift``·I, raising ``NonFinite`` when a product holds NaN or inf."""
    def matvec(v):
        out = op.matvec(v) - shift * v.reshape(-1)
        if not np.isfinite(out).all():
            raise NonFinite("a Hessian-vector product is not finite (NaN/inf loss here)")
        return out
    return LinearOperator(op.shape, dtype=np.float64, matvec=matvec)


def _zero_pairs(n: int, k: int, v0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of the zero operator: eigenvalues 0 and orthonormal vectors (the start
    vector first, then the unit vectors made orthogonal to it)."""
    basis = np.column_stack([v0] + [np.eye(n)[:, j] for j in range(min(k, n) - 1)])
    q, _ = np.linalg.qr(basis)
    return np.zeros(k), q[:, :k]


def arpack(op: LinearOperator, k: int = 1, which: str = "LA", tol: float = DEFAULT_TOL, seed: int = 0,
           maxiter: int | None = None, shift: float = 0.0,
           vectors: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """The one ARPACK wrapper: ``k`` eigenvalues of the symmetric ``op`` (``which``: LA, SA
    or LM, of ``op`` − ``shift``·I inside ARPACK; ``shift`` is added back), in decreasing
    order, from the start vector ``start_vector(n, seed)``, with unit eigenvectors (n, k)
    if ``vectors`` (else None). Operators too small for ARPACK use the dense matrix; an
    operator that is exactly zero (e.g. the block of an unused layer) gives eigenvalues 0.

    Raises ``NonFinite`` when a product holds NaN or inf and ``ArithmeticError`` when
    Lanczos finds fewer than ``k`` values in ``maxiter`` restarts (with a warning it uses
    the best estimate when it found them all but did not reach ``tol``).
    """
    n = op.shape[0]
    a, v0 = _checked(op, shift), start_vector(n, seed)
    if n <= k + 1:  # too small for ARPACK: the dense matrix
        vals, vecs = np.linalg.eigh(a.matmat(np.eye(n)))
        order = {"LA": np.argsort(-vals), "SA": np.argsort(vals), "LM": np.argsort(-np.abs(vals))}[which][:k]
        vals, vecs = vals[order], vecs[:, order]
    else:
        try:
            vals, vecs = eigsh(a, k=k, which=which, tol=tol, v0=v0, maxiter=maxiter)
        except ArpackNoConvergence as e:
            if len(e.eigenvalues) < k:
                raise ArithmeticError(f"Lanczos ({which}) did not converge in {maxiter} restarts") from None
            warnings.warn(f"Lanczos ({which}) stopped after {maxiter} restarts before reaching tol; "
                          "using the best estimate")
            vals, vecs = e.eigenvalues, e.eigenvectors
        except ArpackError:
            if shift != 0.0 or np.any(op.matvec(v0)):
                raise
            vals, vecs = _zero_pairs(n, k, v0)
    order = np.argsort(vals)[::-1]
    vals = np.asarray(vals, dtype=np.float64)[order] + shift
    if not vectors:
        return vals, None
    vecs = np.asarray(vecs, dtype=np.float64)[:, order]
    vecs /= np.linalg.norm(vecs, axis=0)
    signs = np.sign(vecs[np.abs(vecs).argmax(axis=0), np.arange(vecs.shape[1])])
    return vals, vecs * np.where(signs == 0, 1.0, signs)


def _eig(op, which, tol, seed, maxiter, shift=0.0, k=1, strict=False):
    """``arpack`` eigenvalues, or NaN (with a warning) where a product is not finite or
    Lanczos gives nothing: one grid point's failure is recorded, not fatal. ``strict``:
    raise instead (``NonFinite``, ``ArithmeticError``)."""
    if strict:
        return arpack(op, k, which, tol, seed, maxiter, shift)[0]
    try:
        return arpack(op, k, which, tol, seed, maxiter, shift)[0]
    except NonFinite:
        warnings.warn("a Hessian-vector product is not finite (NaN/inf loss here); recording NaN")
    except ArithmeticError as e:
        warnings.warn(f"{e}; recording NaN (raise --eig_maxiter or --eig_tol)")
    return np.full(k, np.nan)


def min_max_eigs(op: LinearOperator, tol: float = DEFAULT_TOL, seed: int = 0,
                 maxiter: int | None = None, strict: bool = False) -> tuple[float, float]:
    """(λmax, λmin) of the symmetric operator ``op`` (see the module doc for the method);
    NaN where a product is not finite or Lanczos fails, unless ``strict`` (then raises)."""
    first = _eig(op, "LM", tol, seed, maxiter, strict=strict)[0]
    if not np.isfinite(first):
        return np.nan, np.nan
    if first >= 0:
        return first, min(first, _eig(op, "SA", tol, seed, maxiter, shift=first, strict=strict)[0])
    return max(first, _eig(op, "LA", tol, seed, maxiter, shift=first, strict=strict)[0]), first


def top_k(op: LinearOperator, k: int, tol: float = DEFAULT_TOL, seed: int = 0,
          maxiter: int | None = None, strict: bool = False) -> np.ndarray:
    """The ``k`` largest (algebraic) eigenvalues of ``op``, in decreasing order (NaN where
    a product is not finite or Lanczos fails, unless ``strict``: then raises)."""
    return _eig(op, "LA", tol, seed, maxiter, k=k, strict=strict)


def check_finite(op: LinearOperator, where: str = "at this point") -> np.ndarray:
    """Refuse (a ``UserError``) an operator whose product with the fixed start vector is
    not finite, before a run writes anything: one product, returned (exactly zero, with
    probability 1, only when the operator is zero)."""
    product = op.matvec(start_vector(op.shape[0]))
    if not np.isfinite(product).all():
        raise user_error(NonFinite(), where)
    return product


def user_error(e: ArithmeticError, where: str = "here") -> UserError:
    """The one-line error of a Hessian computation that failed (``NonFinite`` or Lanczos
    not converging), for the single-point scripts: nothing is recorded."""
    if isinstance(e, NonFinite):
        return UserError(f"the loss or a Hessian-vector product is not finite (NaN/inf) {where}: "
                         "nothing recorded; check the model file and --at")
    return UserError(f"{e} {where}: nothing recorded; raise --eig_maxiter or --eig_tol")


def top_eigenpairs(op: LinearOperator, k: int, tol: float = DEFAULT_TOL, seed: int = 0,
                   maxiter: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest (algebraic) eigenvalues of ``op`` in decreasing order and their
    unit-norm eigenvectors (float64, shape (n, k)), from the same Lanczos start vector as
    ``top_k``. Each vector's sign is fixed (its largest-magnitude entry is positive), so
    the result is reproducible. Raises ``NonFinite`` if a product is not finite and
    ``ArithmeticError`` if Lanczos finds fewer than ``k`` pairs in ``maxiter`` restarts."""
    return arpack(op, k, "LA", tol, seed, maxiter, vectors=True)


def hutchinson_trace(op: LinearOperator, samples: int, seed: int = 0) -> tuple[float, float, np.ndarray]:
    """Hutchinson's estimate of tr(op): the mean of vᵀ·op·v over ``samples`` Rademacher
    vectors v; returns (estimate, standard error of the mean, the samples)."""
    rng = np.random.default_rng(seed)
    vals = np.empty(samples)
    for i in range(samples):
        v = rng.integers(0, 2, op.shape[0]).astype(np.float64) * 2 - 1
        vals[i] = v @ op.matvec(v)
    se = vals.std(ddof=1) / np.sqrt(samples) if samples > 1 else np.nan
    return float(vals.mean()), float(se), vals


# ------------------------------------------------------------------- progress
class Progress:
    """Progress of a Hessian computation on stderr, so that a long one is never silent.

    ``phase(name)`` starts a named part (say "λmax/λmin"); while its products run, a line
    ``<prefix>: <phase>: N products, T s`` is printed at most every ``every`` seconds,
    and ``end(text)`` prints one line with the phase's products, seconds and ``text``.
    Disabled (``enabled=False``), it prints nothing.
    """

    def __init__(self, op: "Hessian", enabled: bool = True, every: float = 5.0,
                 prefix: str = "hessian", stream=None) -> None:
        self.op, self.enabled, self.every, self.prefix = op, enabled, every, prefix
        self.stream = stream or sys.stderr
        self.t0 = self.last = time.perf_counter()
        self.name, self.count0, self.tphase = "", op.count, self.t0
        op.on_product = self._tick if enabled else None

    def _print(self, text: str) -> None:
        if self.enabled:
            print(f"{self.prefix}: {text}", file=self.stream, flush=True)

    def phase(self, name: str) -> None:
        self.name, self.count0, self.tphase = name, self.op.count, time.perf_counter()

    def _tick(self, count: int) -> None:
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            self._print(f"{self.name}: {count - self.count0} products, {now - self.tphase:.1f} s "
                        f"(total {count} products, {now - self.t0:.1f} s)")

    def end(self, text: str = "") -> None:
        now = time.perf_counter()
        self.last = now
        self._print(f"{self.name} done: {self.op.count - self.count0} products in "
                    f"{now - self.tphase:.1f} s" + (f"; {text}" if text else ""))


# ------------------------------------------------------ stochastic Lanczos quadrature
def lanczos(op: LinearOperator, steps: int, v0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``steps`` steps of the Lanczos process on the symmetric ``op`` from ``v0``, in
    float64 with full reorthogonalisation (each new vector is orthogonalised twice against
    all earlier ones, so no spurious copies of converged eigenvalues appear).

    Returns the tridiagonal matrix as (alpha (m,), beta (m-1,)), m = min(steps, n); m is
    smaller when the Krylov space is invariant (beta ≈ 0: the start vector lies in an
    invariant subspace, and the Ritz values are then exact eigenvalues). Raises
    ``NonFinite`` when a product holds NaN or inf. Memory: m vectors of n float64.
    """
    n = op.shape[0]
    m = max(1, min(int(steps), n))
    V = np.zeros((m, n))
    v = np.asarray(v0, dtype=np.float64).reshape(-1)
    v = v / np.linalg.norm(v)
    alpha, beta = [], []
    for j in range(m):
        V[j] = v
        w = np.asarray(op.matvec(v), dtype=np.float64).reshape(-1)
        if not np.isfinite(w).all():
            raise NonFinite
        alpha.append(float(w @ v))
        for _ in range(2):
            w = w - V[:j + 1].T @ (V[:j + 1] @ w)
        b = float(np.linalg.norm(w))
        if j == m - 1:
            break
        scale = max(abs(a) for a in alpha) + (max(beta) if beta else 0.0)
        if b <= 1e-10 * max(scale, np.finfo(float).tiny):
            break
        beta.append(b)
        v = w / b
    return np.array(alpha), np.array(beta)


def slq_nodes(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gauss quadrature of one Lanczos run: the Ritz values (eigenvalues of the
    tridiagonal matrix, increasing) and their weights, the squared first components of
    its eigenvectors (they sum to 1)."""
    from scipy.linalg import eigh_tridiagonal
    if len(alpha) == 1:
        return np.array(alpha, dtype=np.float64), np.ones(1)
    vals, vecs = eigh_tridiagonal(alpha, beta)
    w = vecs[0] ** 2
    return vals, w / w.sum()


def slq_start_vector(n: int, seed: int, start: int) -> np.ndarray:
    """The Gaussian start vector of random start ``start`` (the same on every rank)."""
    return np.random.default_rng([int(seed), int(start)]).standard_normal(n)


def slq_start(op: LinearOperator, steps: int, seed: int = 0, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(Ritz values, weights) of random start ``start``: Lanczos from a Gaussian vector."""
    return slq_nodes(*lanczos(op, steps, slq_start_vector(op.shape[0], seed, start)))


def spectral_density(values: list, weights: list, sigma: float, n_grid: int = 1000,
                     lo: float | None = None, hi: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The SLQ estimate of the eigenvalue density: the mean over the random starts of
    Σ_j w_j·N(t; θ_j, σ²) on a grid of ``n_grid`` points (default range: the extreme Ritz
    values widened by 5σ), normalised so that its trapezoid integral over the grid is 1.
    ``values``/``weights``: one array per start (NaN values and their weights ignored)."""
    th = np.concatenate([np.asarray(v, dtype=np.float64) for v in values])
    wt = np.concatenate([np.asarray(w, dtype=np.float64) for w in weights]) / len(values)
    keep = np.isfinite(th)
    th, wt = th[keep], wt[keep]
    lo = th.min() - 5 * sigma if lo is None else lo
    hi = th.max() + 5 * sigma if hi is None else hi
    grid = np.linspace(lo, hi, n_grid)
    density = np.zeros(n_grid)
    for t, w in zip(th, wt):
        density += w * np.exp(-0.5 * ((grid - t) / sigma) ** 2)
    density /= sigma * np.sqrt(2 * np.pi)
    mass = np.trapezoid(density, grid) if hasattr(np, "trapezoid") else np.trapz(density, grid)
    return grid, density / mass


# ----------------------------------------------------------------- per-layer blocks
def layer_blocks(net: torch.nn.Module,
                 groups: list[str] | None = None) -> list[tuple[str, list[tuple[str, "torch.nn.Parameter"]]]]:
    """The diagonal Hessian blocks of ``net``: [(block name, [(parameter name, parameter)])].

    By default one block per module that owns parameters with more than one dimension
    (conv and linear weights; the parameters the Hessian is taken with respect to), in
    model order. A prefix in ``groups`` (e.g. ``layer1`` or ``features.0``) merges all
    modules whose qualified name is the prefix or starts with ``prefix.`` into one
    block named after the prefix, placed where its first module is. A prefix that
    matches nothing raises ``ValueError``.
    """
    groups = list(groups or [])
    blocks: dict[str, list] = {}
    used = set()
    for mname, module in net.named_modules():
        own = [(f"{mname}.{n}" if mname else n, p) for n, p in module.named_parameters(recurse=False)
               if p.dim() > 1]
        if not own:
            continue
        key = next((g for g in groups if mname == g or mname.startswith(g + ".")), None)
        if key is not None:
            used.add(key)
        blocks.setdefault(key if key is not None else (mname or "(root)"), []).extend(own)
    missing = [g for g in groups if g not in used]
    if missing:
        raise ValueError(f"no module with parameters of > 1 dimension under: {', '.join(missing)}")
    return list(blocks.items())


def exact_trace(op: LinearOperator) -> float:
    """tr(op) from the n products with the unit vectors (exact; n = op.shape[0])."""
    n = op.shape[0]
    total = 0.0
    for i in range(n):
        e = np.zeros(n)
        e[i] = 1.0
        total += float(op.matvec(e)[i])
    return total
