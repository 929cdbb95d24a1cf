"""Every path that differs on a GPU, run as users run it (command lines with ``--cuda``, the
Python API with ``device="cuda"``), against the same run on the CPU (doc/gpu.md).

Each test is one comparison: run A (the reference: the CPU, fp32, and the eager engine
where the engine matters) against run B (the GPU variant). Every test has two forms:

- ``gpu``: run B with ``--cuda``; skipped, with the reason, where ``torch.cuda.is_available()``
  is False.
- ``smoke``: run B on the CPU (``--cuda`` dropped, ``device="cpu"``) with the same flags,
  files and tolerances, so that the comparison code itself runs on a machine without a GPU.
  A few run in every slow test run; ``LL_CUDA_SMOKE=1`` runs them all.

``pytest -m cuda`` selects this file (``bash bench/gpu_check.sh`` runs it on a GPU node).
The bounds are the documented ones (doc/engine.md, doc/gpu.md): fp32 on the GPU equals the
CPU within 1e-5 relative, whatever the engine or the points per pass; tf32 within 1e-3 and
bf16 within 1e-2 relative of fp32 over the test grids.
"""
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

import model_loader
from conftest import REPO, run_script, write_cifar_batches

ON_GPU = torch.cuda.is_available()
SMOKE_ALL = os.environ.get("LL_CUDA_SMOKE") == "1"
MPIEXEC = os.environ.get("MPIEXEC", "mpiexec")

FP32_REL = 1e-5       # --cuda fp32 == CPU fp32, any engine, any points per pass (doc/engine.md)
TF32_REL = 1e-3       # --precision tf32 against fp32 (doc/gpu.md)
BF16_REL = 1e-2       # --precision bf16 against fp32 (doc/gpu.md)
HESSIAN_REL = 1e-4    # eigenvalues of the same Hessian, products computed on another device

pytestmark = [pytest.mark.cuda, pytest.mark.slow]


def forms(ci=False):
    """The test's two forms; ``ci``: the smoke form runs in every slow run, not only with
    LL_CUDA_SMOKE=1."""
    return [
        pytest.param("gpu", marks=pytest.mark.skipif(
            not ON_GPU, reason="needs a CUDA GPU: torch.cuda.is_available() is False "
                               "(LL_CUDA_SMOKE=1 runs this test's smoke form on the CPU)")),
        pytest.param("smoke", marks=pytest.mark.skipif(
            not (ci or SMOKE_ALL), reason="the CPU smoke form of a GPU test: set LL_CUDA_SMOKE=1")),
    ]


def on(form, args):
    """Run B's arguments: as written on a GPU, ``--cuda`` dropped in the smoke form."""
    return [str(a) for a in args if form == "gpu" or a != "--cuda"]


# ----------------------------------------------------------------------------- inputs
@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """CIFAR-format data (300 train, 100 test) and checkpoints with BatchNorm statistics
    and affine parameters of their own (so that folding BN is not an identity)."""
    root = tmp_path_factory.mktemp("cuda_inputs")
    write_cifar_batches(str(root), n_train=300, n_test=100)
    ckpt = {"resnet20": bn_checkpoint("resnet20", (16, 3, 32, 32), 0, root),
            "digits_cnn": bn_checkpoint("digits_cnn", (32, 1, 8, 8), 0, root),
            "digits_cnn_b": bn_checkpoint("digits_cnn", (32, 1, 8, 8), 1, root)}
    return root, ckpt


def bn_checkpoint(model, shape, seed, root):
    torch.manual_seed(seed)
    net = model_loader.build_model(model).train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(*shape) * 1.5 + 0.2)
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    path = str(root / f"{model}_{seed}.t7")
    torch.save({"state_dict": net.eval().state_dict()}, path)
    return path


def model_args(inputs, model):
    root, ckpt = inputs
    args = ["--model", model, "--model_file", ckpt[model], "--threads", "1", "--no_progress"]
    return args + (["--datapath", str(root)] if model.startswith("resnet") else ["--max_samples", "300"])


def numbers(path, skip=("products", "seconds", "time")):
    """{name: array} of every numeric dataset in an HDF5 file (groups flattened)."""
    out = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "fiub" and not any(s in name for s in skip):
            out[name] = np.asarray(obj[()], dtype=np.float64)
    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return out


def compare(a, b, names, rtol, atol=0.0):
    """The datasets ``names`` of files a and b agree within rtol (NaN where the other is NaN)."""
    na, nb = numbers(a), numbers(b)
    for n in names:
        assert n in na and n in nb, (n, sorted(na), sorted(nb))
        np.testing.assert_allclose(nb[n], na[n], rtol=rtol, atol=atol, err_msg=n)
    return na, nb


def run(args, env=None, timeout=900):
    return run_script(args, env=env, timeout=timeout, check=True)


def engine_line(p):
    lines = [line for line in p.stderr.splitlines() if "engine:" in line]
    assert lines, p.stderr
    return lines[-1].split("engine:", 1)[1].strip()


# ------------------------------------------------------------------ surfaces
GRID = ["--x=-1:1:3", "--y=-1:1:3", "--test"]


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    """Run A, once per model: the CPU, fp32, the eager engine; its direction file (never
    modified by a run that reads it) serves every run B of that model."""
    done = {}

    def get(model):
        if model not in done:
            d = tmp_path_factory.mktemp(f"reference_{model}")
            dirs, surf = str(d / "dirs.h5"), str(d / "a.h5")
            run(["plot_surface.py", *model_args(inputs, model), *GRID, "--engine", "eager", "--dir_file", dirs,
                 "--surf_file", surf])
            done[model] = dirs, surf
        return done[model]
    return get


def surface_pair(inputs, reference, tmp_path, model, form, extra_b):
    """(run A's file, run B's file, run B's process): B is ``--cuda`` + extra_b."""
    dirs, a = reference(model)
    b = str(tmp_path / "b.h5")
    pb = run(on(form, ["plot_surface.py", *model_args(inputs, model), *GRID, "--dir_file", dirs, "--cuda",
                       "--surf_file", b, *extra_b]))
    return a, b, pb


def assert_acc_close(na, nb, points):
    """Accuracies agree within ``points`` percentage points (the same logits up to rounding:
    an argmax may flip only where two logits tie to rounding)."""
    for n in ("train_acc", "test_acc"):
        assert np.abs(nb[n] - na[n]).max() <= points + 1e-9, (n, na[n], nb[n])


@pytest.mark.parametrize("model", ["resnet20", "digits_cnn"])
@pytest.mark.parametrize("form", forms(ci=True))
def test_surface_on_the_gpu_equals_the_cpu(inputs, reference, tmp_path, model, form):
    """--cuda (engine auto: BN folded, channels_last) == the CPU's eager evaluation, fp32."""
    a, b, pb = surface_pair(inputs, reference, tmp_path, model, form, [])
    na, nb = compare(a, b, ["train_loss", "test_loss"], FP32_REL)
    assert_acc_close(na, nb, 100 / 300)
    assert nb["done"].all() and nb["train_loss"].shape == (3, 3)
    path = engine_line(pb)
    assert path.startswith("fused (") and "channels_last" in path, path


@pytest.mark.parametrize("engine", ["eager", "fused", "compiled"])
@pytest.mark.parametrize("form", forms())
def test_each_engine_on_the_gpu_equals_the_cpu(inputs, reference, tmp_path, engine, form):
    # compiling ResNet-20 takes minutes on a CPU: the smoke form compiles digits_cnn
    model = "digits_cnn" if (engine == "compiled" and form == "smoke") else "resnet20"
    a, b, pb = surface_pair(inputs, reference, tmp_path, model, form, ["--engine", engine])
    compare(a, b, ["train_loss", "test_loss"], FP32_REL)
    path = engine_line(pb)
    if engine == "eager":
        assert path.startswith("eager"), path
    else:
        assert path.startswith("fused (") and "channels_last" in path, path
    if engine == "compiled" and form == "gpu":
        assert "compiled (" in path and "not compiled" not in path, path


@pytest.mark.parametrize("form", forms())
def test_four_points_per_pass_on_the_gpu_equal_the_cpu(inputs, reference, tmp_path, form):
    a, b, _ = surface_pair(inputs, reference, tmp_path, "resnet20", form, ["--points_per_pass", "4"])
    compare(a, b, ["train_loss", "test_loss", "train_acc", "test_acc"], FP32_REL)


@pytest.mark.parametrize("precision,bound", [("tf32", TF32_REL), ("bf16", BF16_REL)])
@pytest.mark.parametrize("model", ["resnet20", "digits_cnn"])
@pytest.mark.parametrize("form", forms())
def test_reduced_precision_within_its_bound(inputs, reference, tmp_path, precision, bound, model, form):
    a, b, _ = surface_pair(inputs, reference, tmp_path, model, form, ["--precision", precision])
    na, nb = compare(a, b, ["train_loss", "test_loss"], bound)
    assert_acc_close(na, nb, 5.0)


@pytest.mark.parametrize("form", forms())
def test_two_ranks_on_one_gpu_equal_one_process(inputs, tmp_path, form):
    """mpiexec -n 2 ... --mpi --cuda: both ranks on device 0 (local rank mod 1 GPU)."""
    if not shutil.which(MPIEXEC):
        pytest.skip(f"no {MPIEXEC} on the PATH (set MPIEXEC)")
    dirs, one, two = (str(tmp_path / f) for f in ("dirs.h5", "one.h5", "two.h5"))
    common = ["plot_surface.py", *model_args(inputs, "resnet20"), "--x=-1:1:3", "--y=-1:1:2", "--test",
              "--dir_file", dirs]
    run(on(form, common + ["--cuda", "--surf_file", one]))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    two_ranks = on(form, common + ["--mpi", "--cuda", "--surf_file", two])
    p = subprocess.run([MPIEXEC, "-n", "2", sys.executable, *two_ranks],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "2 rank(s)" in p.stderr, p.stderr
    compare(one, two, ["train_loss", "test_loss", "train_acc", "test_acc"], 1e-6)


@pytest.mark.parametrize("form", forms(ci=True))
def test_api_data_resident_on_the_device(form):
    """landscape.surface(device="cuda") == device="cpu"; the evaluator holds the whole data set
    on the device (its memory grows by at least the data's size)."""
    import landscape
    from evaluation import Evaluator, get_loss_fn
    torch.manual_seed(0)
    net = model_loader.build_model("digits_cnn").eval()
    x, y = torch.randn(200, 1, 8, 8), torch.randint(0, 10, (200,))
    dev = "cuda" if form == "gpu" else "cpu"
    ref = landscape.surface(net, (x, y), x=(-1, 1, 5), device="cpu", batch_size=64)
    got = landscape.surface(net, (x, y), x=(-1, 1, 5), device=dev, batch_size=64)
    np.testing.assert_allclose(got["train_loss"], ref["train_loss"], rtol=FP32_REL)
    big = torch.randn(4096, 1, 8, 8)
    labels = torch.randint(0, 10, (4096,))
    with torch.no_grad():  # the plain evaluation, before the evaluator moves the net
        want = torch.nn.functional.cross_entropy(net(big), labels).item()
    if form == "gpu":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
    ev = Evaluator(net, big, labels, get_loss_fn("crossentropy"), 512, torch.device(dev), engine="eager")
    if form == "gpu":
        assert torch.cuda.memory_allocated() - before >= big.nbytes + labels.nbytes
    loss, _ = ev()
    assert loss == pytest.approx(want, rel=FP32_REL)


# ------------------------------------------------------------------ curvature
def hessian_args(inputs):
    root, ckpt = inputs
    return ["--model", "digits_cnn", "--model_file", ckpt["digits_cnn"], "--max_samples", "100",
            "--threads", "1"]


@pytest.mark.parametrize("form", forms(ci=True))
def test_hessian_single_point_on_the_gpu_equals_the_cpu(inputs, tmp_path, form):
    a, b = str(tmp_path / "a.h5"), str(tmp_path / "b.h5")
    cmd = ["plot_hessian_eigen.py", *hessian_args(inputs), "--top_k", "2", "--trace", "--trace_samples", "10",
           "--eig_tol", "1e-6", "--progress_every", "0"]
    run(cmd + ["--spectrum_file", a])
    run(on(form, cmd + ["--cuda", "--spectrum_file", b]))
    na, _ = compare(a, b, ["top_eigenvalues", "max_eig"], HESSIAN_REL)
    compare(a, b, ["min_eig"], HESSIAN_REL, atol=HESSIAN_REL * abs(na["max_eig"]))
    compare(a, b, ["trace"], HESSIAN_REL)  # the same Rademacher vectors: the same estimate


@pytest.mark.parametrize("form", forms())
def test_hessian_grid_point_on_the_gpu_equals_the_cpu(inputs, tmp_path, form):
    dirs, a, b = (str(tmp_path / f) for f in ("dirs.h5", "a.h5", "b.h5"))
    cmd = ["plot_hessian_eigen.py", *hessian_args(inputs), "--x=-0.5:0.5:2", "--dir_file", dirs,
           "--eig_tol", "1e-6", "--no_progress"]
    run(cmd + ["--surf_file", a])
    run(on(form, cmd + ["--cuda", "--surf_file", b]))
    na, _ = compare(a, b, ["max_eig"], HESSIAN_REL)
    compare(a, b, ["min_eig"], HESSIAN_REL, atol=HESSIAN_REL * np.abs(na["max_eig"]).max())


@pytest.mark.parametrize("form", forms())
def test_hessian_spectrum_on_the_gpu_equals_the_cpu(inputs, tmp_path, form):
    a, b = str(tmp_path / "a.h5"), str(tmp_path / "b.h5")
    cmd = ["hessian_spectrum.py", *hessian_args(inputs), "--n_v", "2", "--lanczos_steps", "20", "--no_progress"]
    run(cmd + ["--spectrum_file", a])
    run(on(form, cmd + ["--cuda", "--spectrum_file", b]))
    na, _ = compare(a, b, ["lambda_max"], HESSIAN_REL)
    compare(a, b, ["lambda_min"], HESSIAN_REL, atol=HESSIAN_REL * abs(na["lambda_max"]))


@pytest.mark.parametrize("form", forms())
def test_sharpness_on_the_gpu_equals_the_cpu(inputs, tmp_path, form):
    cmd = ["sharpness.py", *hessian_args(inputs), "--n_dirs", "2", "--trace_samples", "4", "--ascent_steps", "2",
           "--rho", "0.1", "--eig_tol", "1e-6", "--no_progress"]
    run(cmd + ["--out", str(tmp_path / "a")])
    run(on(form, cmd + ["--cuda", "--out", str(tmp_path / "b")]))
    na = numbers(str(tmp_path / "a.h5"))
    items = [n for n in na if n.startswith("items/")]
    assert items, sorted(na)
    compare(str(tmp_path / "a.h5"), str(tmp_path / "b.h5"), items, HESSIAN_REL, atol=1e-7)


@pytest.mark.parametrize("form", forms())
def test_mode_connectivity_on_the_gpu_equals_the_cpu(inputs, tmp_path, form):
    """The line (evaluation and BN re-estimation only) within 1e-5; the curve after two
    epochs of SGD, the same batches in the same order, within 1e-3."""
    root, ckpt = inputs
    cmd = ["mode_connectivity.py", "--model", "digits_cnn", "--model_file", ckpt["digits_cnn"], "--model_file2",
           ckpt["digits_cnn_b"], "--max_samples", "300", "--epochs", "2", "--points", "5", "--threads", "1",
           "--no_progress"]
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    run(cmd + ["--out_dir", a])
    run(on(form, cmd + ["--cuda", "--out_dir", b]))
    results = "mode_connectivity.h5"
    compare(os.path.join(a, results), os.path.join(b, results), ["line_train_loss"], FP32_REL)
    compare(os.path.join(a, results), os.path.join(b, results), ["curve_train_loss"], 1e-3)
