"""Shared test fixtures: the repository root on sys.path, a CIFAR-10-format data
folder written in exactly the python-pickle batch format, and helpers to run the
scripts as a user would (a real subprocess, from the repository root)."""
import argparse
import os
import pickle
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPAT = os.path.join(REPO, "tests", "compat")  # copies of the original code's facts
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def write_cifar_batches(root, n_train=300, n_test=100, seed=0):
    """Write cifar-10-batches-py/{data_batch_1..5,test_batch} with random images.

    Same format as the real files: pickled dicts with b'data' (N, 3072) uint8 in
    channel-major order and b'labels' a list of ints.
    """
    rng = np.random.default_rng(seed)
    d = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(d, exist_ok=True)
    per = [n_train // 5 + (1 if i < n_train % 5 else 0) for i in range(5)]
    for i, n in enumerate(per):
        _dump(os.path.join(d, f"data_batch_{i + 1}"), rng, n, f"training batch {i + 1} of 5")
    _dump(os.path.join(d, "test_batch"), rng, n_test, "testing batch 1 of 1")
    with open(os.path.join(d, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer",
                                      b"dog", b"frog", b"horse", b"ship", b"truck"],
                     b"num_cases_per_batch": per[0], b"num_vis": 3072}, f)
    return root


def _dump(path, rng, n, label):
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).tolist()
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": label.encode(), b"labels": labels, b"data": data,
                     b"filenames": [f"img_{k}.png".encode() for k in range(n)]}, f, protocol=2)


# ------------------------------------------------ the project's own modules, read with ast
SKIP_DIRS = {"tests", "bench", "doc", "script", ".git", ".ci", "__pycache__"}


def module_files() -> dict[str, str]:
    """{dotted module name: path} of every Python file of the project (not tests, benches)."""
    found = {}
    for root, dirs, files in os.walk(REPO):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, f), REPO)[:-3].replace(os.sep, ".")
                found[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(root, f)
    return found


def is_command(path: str) -> bool:
    """A command: the file has a top-level ``if __name__ == "__main__":`` block."""
    import ast
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    return any(isinstance(n, ast.If) and "__name__" in ast.unparse(n.test) for n in tree.body)


def exact_hessian(net, x, y, loss_sum, names=None):
    """The dense float64 Hessian of the mean loss over (x, y) w.r.t. the parameters
    ``names`` (default: all with > 1 dimension, as hess_vec_prod's), the others fixed, by
    torch.autograd.functional.hessian: the reference the Hessian tests compare against."""
    import copy

    import torch
    from torch.func import functional_call

    from hess_vec_prod import hessian_params
    names = names or [n for n, _ in hessian_params(net)]
    net64 = copy.deepcopy(net).double().eval()
    state = {k: v.double() for k, v in net64.state_dict().items()}
    shapes = [state[n].shape for n in names]
    x = x.double()

    def mean_loss(w):
        params, i = dict(state), 0
        for n, s in zip(names, shapes):
            params[n] = w[i:i + s.numel()].view(s)
            i += s.numel()
        return loss_sum(functional_call(net64, params, (x,)), y) / len(y)

    w0 = torch.cat([state[n].reshape(-1) for n in names])
    return torch.autograd.functional.hessian(mean_loss, w0).numpy()


def copy_repo(dst):
    """The repository's tracked files (``git ls-files``) copied to ``dst``, without the data
    and checkpoint folders: a fresh clone to run documented recipes in."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = os.path.join(REPO, f)
        if not os.path.isfile(src) or f.startswith(("cifar10/data/", "cifar10/trained_nets/")):
            continue
        os.makedirs(os.path.join(dst, os.path.dirname(f)), exist_ok=True)
        shutil.copy2(src, os.path.join(dst, f))


def fenced_blocks(text, languages=("bash", "python")):
    """The fenced code blocks of a Markdown text in these languages: [(language, body)]."""
    return [(m.group(1), m.group(2)) for m in
            re.finditer(r"^```(\w+)\n(.*?)^```", text, flags=re.S | re.M) if m.group(1) in languages]


def shell_commands(block):
    """The command lines of a shell block: comments dropped, lines joined at trailing
    backslashes."""
    commands, current = [], ""
    for line in block.splitlines():
        line = line.split(" #")[0].rstrip() if not line.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            current += line[:-1].rstrip() + " "
        elif line.strip() or current:
            commands.append((current + line.strip()).strip())
            current = ""
    return [c for c in commands if c]


def adapt_command(command, python=sys.executable):
    """A documented command line made runnable here: ``mpirun -n 4`` -> ``mpiexec -n 2``, no
    ``--cuda``, grids of 3 points per axis, this interpreter for ``python``/``python3``."""
    argv = shlex.split(command)
    if argv[:3] == ["mpirun", "-n", "4"]:
        argv[:3] = ["mpiexec", "-n", "2"]
    out = []
    for a in argv:
        if a in ("--cuda", "-c"):
            continue
        if a in ("python", "python3"):
            a = python
        m = re.match(r"^(--[xy]=[^:]+:[^:]+):(\d+)$", a)
        if m:
            a = f"{m.group(1)}:3"
        out.append(a)
    return out


def repo_files_status(root=REPO):
    """The repository's untracked and ignored files (``git status --porcelain --ignored``,
    every file listed), without the caches of Python and its tools (__pycache__,
    .pytest_cache, .ruff_cache, ...); None outside a git checkout."""
    try:
        p = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all", "-z"],
                           cwd=root, capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if p.returncode != 0:
        return None
    entries = [e for e in p.stdout.decode(errors="replace").split("\0") if e]
    caches = re.compile(r"(^|/)(__pycache__|\.\w+_cache)/")
    return {e[3:] for e in entries if e[:2] in ("??", "!!") and not caches.search(e[3:])}


@pytest.fixture(scope="session", autouse=True)
def repo_left_clean():
    """The suite writes only into temporary folders: fails at the end of the session if the
    repository gained an untracked or ignored file (e.g. an out/<model>... surface of a run
    without --surf_file)."""
    before = repo_files_status()
    yield
    after = repo_files_status()
    if before is not None and after is not None:
        new = sorted(after - before)
        assert not new, (f"the tests wrote {len(new)} file(s) into the repository {REPO} "
                         f"(tests must write into tmp_path): {new[:20]}")


@pytest.fixture
def one_thread():
    """One torch thread for the test (tiny Hessian products: fastest, and immune to a busy machine)."""
    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory):
    """A folder holding cifar-10-batches-py/ with 300 train and 100 test images."""
    return write_cifar_batches(str(tmp_path_factory.mktemp("cifar")))


def run_script(args, cwd=REPO, env=None, timeout=600, check=False):
    """Run ``python <args...>`` as a user would; returns CompletedProcess (text)."""
    e = dict(os.environ)
    e.setdefault("OMP_NUM_THREADS", "1")
    e["PYTHONUNBUFFERED"] = "1"
    if env:
        e.update(env)
    p = subprocess.run([sys.executable] + [str(a) for a in args], cwd=cwd, env=e,
                       capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def assert_one_line_error(p):
    """A user error: non-zero exit, one 'error: ...' line, no traceback."""
    assert p.returncode != 0, p.stdout
    assert "Traceback" not in p.stderr, p.stderr
    lines = [l for l in p.stderr.strip().splitlines() if l.strip()]
    assert lines and lines[-1].startswith("error: "), p.stderr
    return lines[-1]


def run_mpi(args, n=2, cwd=REPO, env=None, timeout=300):
    """Run ``mpiexec -n N python <args...>`` (OMP_NUM_THREADS=1, unbuffered); returns CompletedProcess (text)."""
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if env:
        e.update(env)
    return subprocess.run(["mpiexec", "-n", str(n), sys.executable] + [str(a) for a in args], cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_error_line(stderr, only=False):
    """Exactly one 'error: ...' line, the last one printed, and no traceback (``only``: and
    nothing else on stderr); returns the line."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    errs = [line for line in lines if line.startswith("error:")]
    assert len(errs) == 1 and lines[-1] == errs[0], stderr
    assert not only or len(lines) == 1, stderr
    return errs[0]


def run_main_error(main, argv, capsys):
    """``main(argv)`` as its script runs it (errors.run_main); returns (exit status, stderr)."""
    from errors import run_main
    capsys.readouterr()  # only this run's output
    with pytest.raises(SystemExit) as e:
        run_main(main, argv)
    return e.value.code, capsys.readouterr().err


def snapshot(folder):
    """Every file (sha256 of its bytes) and folder ('<dir>') under ``folder``, by relative path:
    equal before and after a run when the run changed and created nothing."""
    import hashlib
    state = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in dirs:
            state[os.path.relpath(os.path.join(root, name), folder)] = "<dir>"
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                state[os.path.relpath(os.path.join(root, name), folder)] = hashlib.sha256(f.read()).hexdigest()
    return state


def save_checkpoint(path, model="digits_mlp", seed=0):
    """A checkpoint of zoo ``model`` initialised with ``seed``, in the training script's format."""
    import torch

    from cifar10.models import MODELS
    torch.manual_seed(seed)
    torch.save({"state_dict": MODELS[model]().state_dict()}, str(path))
    return str(path)


# ------------------------------------------------- the tiny CNN of the curvature tests
N_SAMPLES = 40
TINY_SOURCE = '''"""A tiny CNN for the 8x8 digits (186 weights with > 1 dimension), for the tests."""
from collections import OrderedDict

import torch.nn as nn


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 2, 3, stride=2), act=nn.Tanh()))
        self.head = nn.Sequential(OrderedDict(fc1=nn.Linear(18, 6), act=nn.Tanh(), fc2=nn.Linear(6, 10)))

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def tiny_cnn():
    return TinyCNN()
'''


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(folder on PYTHONPATH with tinynets.py, checkpoint, the model, its data): the tiny CNN
    of the curvature tests, once per test module."""
    import importlib.util

    import torch
    folder = tmp_path_factory.mktemp("tiny")
    (folder / "tinynets.py").write_text(TINY_SOURCE)
    spec = importlib.util.spec_from_file_location("tinynets", folder / "tinynets.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    net = mod.tiny_cnn()
    ckpt = str(folder / "tiny.t7")
    torch.save({"state_dict": net.state_dict()}, ckpt)
    return argparse.Namespace(folder=str(folder), ckpt=ckpt, net=net.eval(), data=digits_data(N_SAMPLES),
                              env={"PYTHONPATH": str(folder)})


def digits_data(n):
    import dataloader
    return dataloader.load_data(argparse.Namespace(
        dataset="digits", datapath="", raw_data=False, download=False, data_split=1, split_idx=0,
        max_samples=n, trainloader="", testloader=""))


def data_hessian(net, data, names=None, loss_name="crossentropy"):
    """exact_hessian over a data set's training split."""
    from evaluation import get_loss_fn
    return exact_hessian(net, data.train_x, data.train_y, get_loss_fn(loss_name), names)


# ------------------------------------------------- surface files of the plotting tests
SURFACE_SETTINGS = {"model": "digits_cnn", "dir_type": "weights", "xnorm": "filter",
                    "dataset": "digits", "model_file": "model_10.pt", "model_file2": ""}


@pytest.fixture
def quick_dpi(monkeypatch):
    """Figures at 100 dpi instead of 300: 9x fewer pixels to rasterize, same content."""
    import plot_common
    monkeypatch.setattr(plot_common, "DPI", 100)


def write_ours(path, x, y, values, done=None, settings=None, dir_file="dirs.h5"):
    """Our format via SurfaceWriter; ``values[name]`` is [i, j] = value at (x_i, y_j)."""
    from surface import SurfaceWriter
    shape = (len(x),) if y is None else (len(x), len(y))
    done = np.ones(shape, bool) if done is None else done
    w = SurfaceWriter(str(path), x, y, list(values), settings or SURFACE_SETTINGS,
                      attrs={"dir_file": dir_file})
    idx = np.flatnonzero(done.ravel())
    w.record(idx, {k: np.asarray(v, float).ravel()[idx] for k, v in values.items()})
    w.save()
    return str(path)


def write_original(path, x, y, values, done=None, dir_file="model_300.t7_weights.h5"):
    """Exactly as the original wrote it: (nx, ny) arrays filled in meshgrid(x, y) order."""
    shape = (len(x),) if y is None else (len(x), len(y))
    done = np.ones(shape, bool) if done is None else done
    import h5py
    with h5py.File(path, "w") as f:
        f["dir_file"] = dir_file
        f["xcoordinates"] = np.asarray(x, float)
        if y is not None:
            f["ycoordinates"] = np.asarray(y, float)
        for k, v in values.items():
            v = np.where(done, np.asarray(v, float), -1.0)
            f[k] = v if y is None else v.T.ravel().reshape(shape)   # meshgrid order
    return str(path)


def grid_points(nx, ny, x=(-1, 1), y=(-1, 1)):
    xs, ys = np.linspace(*x, nx), np.linspace(*y, ny)
    X, Y = np.meshgrid(xs, ys, indexing="ij")
    return xs, ys, X, Y


def contour_set(fig):
    """The contour set of a figure's first axes."""
    from matplotlib.contour import ContourSet
    return next(c for c in fig.axes[0].get_children() if isinstance(c, ContourSet))

def assert_main_error(main, argv, capsys):
    """``main(argv)`` in this process as the command line runs it: exit status 2 and one
    'error: ...' line, nothing else on stderr, no traceback. Returns the line."""
    code, err = run_main_error(main, [str(a) for a in argv], capsys)
    assert code == 2, err
    return assert_one_error_line(err, only=True)


@pytest.fixture
def file_size_limit(request):
    """Writes past 1 kB (or the bytes given by indirect parametrization) fail with EFBIG,
    as they do on a full disk (ENOSPC): RLIMIT_FSIZE, with SIGXFSZ ignored. The value is a
    function that lifts the limit (the disk has room again)."""
    import resource
    import signal
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (getattr(request, "param", 1024), hard))

    def lift():
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    try:
        yield lift
    finally:
        lift()


def snapshot_files(folder):
    """{path: sha256} of every file under ``folder`` (hidden ones too; ``snapshot`` without
    the folders): compare two to see that nothing was changed or created."""
    return {os.path.join(folder, k): v for k, v in snapshot(folder).items() if v != "<dir>"}


@pytest.fixture
def small_disk(tmp_path):
    """``mount(size)`` -> a folder on a fresh tmpfs of ``size`` (e.g. "64k"): a real file
    system that fills up (needs root, as in CI); skipped where it cannot be mounted."""
    mounted = []

    def mount(size):
        d = tmp_path / f"disk{len(mounted)}_{size}"
        d.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
                          capture_output=True).returncode:
            pytest.skip("cannot mount a small tmpfs here (not root?)")
        mounted.append(d)
        return str(d)
    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def fill_disk(folder):
    """Take every byte left on the file system of ``folder`` (a file named 'filler')."""
    fd = os.open(os.path.join(folder, "filler"), os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 1024):
            pass
    except OSError:
        pass
    os.close(fd)

