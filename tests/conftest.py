"""Shared test fixtures: the repository root on sys.path, a CIFAR-10-format data
folder written in exactly the python-pickle batch format, and helpers to run the
scripts as a user would (a real subprocess, from the repository root)."""
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


def snapshot_files(folder):
    """{path: bytes} of every file under ``folder`` (hidden ones too): compare two to see
    that nothing was changed or created."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[p] = fh.read()
    return out


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
