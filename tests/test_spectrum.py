"""Hessian spectral density (hessian_spectrum.py, stochastic Lanczos quadrature) against
the exact spectrum of a small network; 2 MPI ranks == 1 rank; resume after kill -9; and
the table of bad Hessian inputs of all three Hessian scripts (one line, exit 2, nothing
written, existing files intact)."""
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

import torch
from scipy.stats import wasserstein_distance

import errors
import hess_vec_prod
from conftest import N_SAMPLES, REPO, run_mpi, run_script, save_checkpoint, snapshot
from conftest import data_hessian as exact_hessian
from hess_vec_prod import hessian_operator, lanczos, slq_nodes, slq_start, spectral_density

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny products: one thread is fastest


def operator(tiny):
    """The operator the scripts build (hessian_operator: the product batch chosen by memory)."""
    return hessian_operator(tiny.net, tiny.data.train_x, tiny.data.train_y, "crossentropy")


def test_gauss_quadrature_of_a_known_matrix_is_exact():
    """A full Lanczos run on a diagonal matrix: Ritz values = eigenvalues, weights =
    squared components of the (unit) start vector, summing to 1."""
    lam = np.linspace(-2, 5, 30)
    op = hess_vec_prod.LinearOperator((30, 30), matvec=lambda v: lam * v.reshape(-1), dtype=np.float64)
    v0 = np.random.default_rng(0).standard_normal(30)
    vals, w = slq_nodes(*lanczos(op, 100, v0))  # steps are capped at n
    np.testing.assert_allclose(vals, lam, atol=1e-10)
    np.testing.assert_allclose(w, v0 ** 2 / (v0 ** 2).sum(), atol=1e-10)
    grid, density = spectral_density([vals], [w], sigma=0.05, n_grid=2000)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-12)
    # an invariant start (an eigenvector): Lanczos stops after one step, exactly
    vals, w = slq_nodes(*lanczos(op, 10, np.eye(30)[3]))
    np.testing.assert_allclose(vals, [lam[3]], atol=1e-12)
    np.testing.assert_allclose(w, [1.0])


@pytest.mark.slow
def test_slq_against_exact_spectrum(tiny):
    """Mass 1; extreme Ritz values within 1e-4·ρ of the exact λmax/λmin by 40 steps; the
    Wasserstein-1 distance to the exact eigenvalue measure shrinks as the steps grow."""
    ev = np.linalg.eigvalsh(exact_hessian(tiny.net, tiny.data))
    rho = abs(ev).max()
    op = operator(tiny)
    assert op.shape == (186, 186) and ev[0] < 0 < ev[-1]
    distances = []
    for steps in (3, 10, 40):
        starts = [slq_start(op, steps, seed=0, start=i) for i in range(4)]
        th = np.concatenate([s[0] for s in starts])
        w = np.concatenate([s[1] for s in starts]) / 4
        assert w.sum() == pytest.approx(1.0, abs=1e-12) and (w >= 0).all()
        distances.append(wasserstein_distance(th, ev, w))
        if steps == 40:
            assert abs(th.max() - ev[-1]) < 1e-4 * rho and abs(th.min() - ev[0]) < 1e-4 * rho
            grid, density = spectral_density([s[0] for s in starts], [s[1] for s in starts], 0.01 * rho)
            assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-12)
    assert distances[0] > distances[1] > distances[2], distances
    assert distances[2] < 0.5 * distances[0]


def spectrum_cmd(tiny, out, *extra):
    return ["hessian_spectrum.py", "--model", "tinynets:tiny_cnn", "--model_file", tiny.ckpt,
            "--max_samples", str(N_SAMPLES), "--threads", "1", "--batch_size", "16",
            "--spectrum_file", out, *extra]


def read(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f}, dict(f.attrs)


@pytest.mark.slow
def test_script_one_rank_two_ranks_and_plot(tiny, tmp_path):
    one, two = str(tmp_path / "one.h5"), str(tmp_path / "two.h5")
    p = run_script(spectrum_cmd(tiny, one, "--n_v", "3", "--lanczos_steps", "40", "--plot",
                                "--format", "png"), env=tiny.env, check=True)
    assert "lambda_max" in p.stdout and "start 2 done: 40 products" in p.stderr
    assert os.path.getsize(one + "_density.png") > 10_000
    r, attrs = read(one)
    assert r["done"].all() and r["ritz_values"].shape == (3, 40)
    # the file's numbers are those of the library on the same operator
    op = operator(tiny)
    for k in range(3):
        vals, w = slq_start(op, 40, seed=0, start=k)
        np.testing.assert_allclose(r["ritz_values"][k], vals, rtol=1e-5, atol=1e-7)
    ev = np.linalg.eigvalsh(exact_hessian(tiny.net, tiny.data))
    assert r["lambda_max"] == pytest.approx(ev[-1], abs=1e-4 * abs(ev).max())
    assert r["lambda_min"] == pytest.approx(ev[0], abs=1e-4 * abs(ev).max())
    assert np.trapezoid(r["density"], r["grid"]) == pytest.approx(1.0, abs=1e-9)
    assert r["negative_mass"] == pytest.approx((ev < -r["sigma"]).mean(), abs=0.15)
    # two MPI ranks: the same starts, the same file content
    q = run_mpi(spectrum_cmd(tiny, two, "--n_v", "3", "--lanczos_steps", "40", "--mpi", "--no_progress"),
                env=tiny.env)
    assert q.returncode == 0, q.stderr
    r2, attrs2 = read(two)
    assert attrs2["settings"] == attrs["settings"]
    for k in ("ritz_values", "ritz_weights", "density", "lambda_max", "lambda_min"):
        np.testing.assert_allclose(r2[k], r[k], rtol=1e-9, atol=1e-12)
    # a new --sigma redraws the density from the stored starts, without a product
    import hessian_spectrum
    sys.path.insert(0, tiny.folder)
    try:
        hessian_spectrum.main(spectrum_cmd(tiny, one, "--n_v", "3", "--lanczos_steps", "40", "--sigma", "0.05",
                                           "--no_progress")[1:])
    finally:
        sys.path.remove(tiny.folder)
    r3, attrs3 = read(one)
    np.testing.assert_array_equal(r3["ritz_values"], r["ritz_values"])
    assert r3["sigma"] == pytest.approx(5 * r["sigma"]) and '"sigma": 0.05' in attrs3["density_settings"]


@pytest.mark.slow
def test_resume_after_kill(tiny, tmp_path):
    """kill -9 in the middle: the rerun computes only the missing starts and gives the
    numbers of an uninterrupted run."""
    out = str(tmp_path / "killed.h5")
    n_v = 6
    slow = ["--lanczos_steps", "30", "--batch_size", "8"]  # about 0.5 s per start
    cmd = [sys.executable] + spectrum_cmd(tiny, out, "--n_v", str(n_v), *slow, "--save_every", "0.01",
                                          "--no_progress")
    proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1", **tiny.env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            with h5py.File(out, "r") as f:
                done = int(f["done"][()].sum())
        except (OSError, KeyError):
            pass
        if done >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 1 <= done < n_v, "the run ended before it could be killed"
    p = run_script(spectrum_cmd(tiny, out, "--n_v", str(n_v), *slow, "--no_progress"), env=tiny.env, check=True)
    resumed = int(p.stderr.split(" already done")[0].split(",")[-1])
    assert 1 <= resumed < n_v
    r, _ = read(out)
    assert r["done"].all()
    op = operator(tiny)
    for k in (0, n_v - 1):  # one start from before the kill, one from after
        np.testing.assert_allclose(r["ritz_values"][k], slq_start(op, 30, 0, k)[0], rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.cuda
@pytest.mark.slow
def test_cuda_equals_cpu(tiny, tmp_path):
    cpu, gpu = str(tmp_path / "cpu.h5"), str(tmp_path / "gpu.h5")
    run_script(spectrum_cmd(tiny, cpu, "--n_v", "2", "--lanczos_steps", "20"), env=tiny.env, check=True)
    run_script(spectrum_cmd(tiny, gpu, "--n_v", "2", "--lanczos_steps", "20", "--cuda"), env=tiny.env, check=True)
    a, b = read(cpu)[0], read(gpu)[0]
    np.testing.assert_allclose(b["lambda_max"], a["lambda_max"], rtol=1e-4)
    np.testing.assert_allclose(b["lambda_min"], a["lambda_min"], rtol=1e-4, atol=1e-4 * abs(a["lambda_max"]))


# ---------------------------------------------------------------------- bad inputs
BAD = [  # (script, flags, a word the message must contain)
    ("plot_hessian_eigen.py", ["--top_k", "1", "--eig_maxiter", "0"], "--eig_maxiter"),
    ("plot_hessian_eigen.py", ["--top_k", "1", "--eig_maxiter", "-3"], "--eig_maxiter"),
    ("plot_hessian_eigen.py", ["--top_k", "1", "--eig_tol", "nan"], "--eig_tol"),
    ("plot_hessian_eigen.py", ["--top_k", "1", "--eig_tol", "inf"], "--eig_tol"),
    ("plot_hessian_eigen.py", ["--top_k", "1", "--eig_tol=-0.001"], "--eig_tol"),
    ("plot_hessian_eigen.py", ["--top_k", "-1"], "--top_k"),
    ("plot_hessian_eigen.py", ["--top_k", "100000"], "--top_k"),
    ("plot_hessian_eigen.py", ["--trace", "--trace_samples", "1"], "--trace_samples"),
    ("plot_hessian_eigen.py", ["--trace", "--hess_cache_mb", "-1"], "--hess_cache_mb"),
    ("plot_hessian_eigen.py", ["--trace", "--hess_cache_mb", "nan"], "--hess_cache_mb"),
    ("plot_hessian_eigen.py", ["--trace", "--at", "0.5,x", "--dir_file", "{dirs}"], "--at"),
    ("plot_hessian_eigen.py", ["--trace", "--at", "1,2,3", "--dir_file", "{dirs}"], "--at"),
    ("plot_hessian_eigen.py", ["--trace", "--at", "nan", "--dir_file", "{dirs}"], "--at"),
    ("plot_hessian_eigen.py", ["--trace", "--at", "0.5"], "--dir_file"),
    ("plot_hessian_eigen.py", ["--trace", "--at", "0.5", "--dir_file", "{tmp}/none.h5"], "not found"),
    ("plot_hessian_eigen.py", ["--trace", "--progress_every", "-1"], "--progress_every"),
    ("hessian_spectrum.py", ["--n_v", "0"], "--n_v"),
    ("hessian_spectrum.py", ["--lanczos_steps", "0"], "--lanczos_steps"),
    ("hessian_spectrum.py", ["--sigma", "0"], "--sigma"),
    ("hessian_spectrum.py", ["--sigma", "-0.1"], "--sigma"),
    ("hessian_spectrum.py", ["--sigma", "nan"], "--sigma"),
    ("hessian_spectrum.py", ["--n_grid", "1"], "--n_grid"),
    ("hessian_spectrum.py", ["--hess_cache_mb", "inf"], "--hess_cache_mb"),
    ("hessian_spectrum.py", ["--y=-1:1:3"], "--y not used"),  # a flag of the grid scripts only
    ("hessian_spectrum.py", ["--at", "0.5"], "--dir_file"),
    ("hessian_spectrum.py", ["--spectrum_file", "{existing}", "--lanczos_steps", "7"], "different settings"),
    ("hessian_spectrum.py", ["--spectrum_file", "{text}"], "not a"),
    ("hessian_spectrum.py", ["--spectrum_file", "{tmp}/folder"], "is a folder"),
    ("layer_curvature.py", ["--curvature_file", "{text}/x.h5"], "is a file"),
    ("layer_curvature.py", ["--eig_maxiter", "0"], "--eig_maxiter"),
    ("layer_curvature.py", ["--trace_samples", "1"], "--trace_samples"),
    ("layer_curvature.py", ["--exact_trace_max", "-1"], "--exact_trace_max"),
    ("layer_curvature.py", ["--group", "nosuch"], "nosuch"),
    ("layer_curvature.py", ["--group", ","], "--group"),
]


@pytest.fixture(scope="module")
def bad_input_files(tmp_path_factory):
    """A folder with a direction file, a finished spectrum file and a text file."""
    import plot_surface
    tmp = tmp_path_factory.mktemp("bad")
    save_checkpoint(tmp / "mlp.t7", "digits_mlp", seed=0)
    dirs = str(tmp / "dirs.h5")
    model = ["--model", "digits_mlp", "--model_file", str(tmp / "mlp.t7"), "--max_samples", "20", "--threads", "1"]
    plot_surface.main(model + ["--x=0:1:2", "--dir_file", dirs, "--surf_file", str(tmp / "surf.h5"), "--no_progress"])
    existing = str(tmp / "spectrum.h5")
    hessian_spectrum_main(model + ["--n_v", "1", "--lanczos_steps", "3", "--spectrum_file", existing, "--no_progress"])
    os.mkdir(tmp / "folder")
    (tmp / "notes.txt").write_text("not HDF5\n")
    return tmp


def hessian_spectrum_main(argv):
    import hessian_spectrum
    return hessian_spectrum.main(argv)


@pytest.mark.parametrize("script,flags,word", BAD, ids=[f"{s[:-3]}:{' '.join(f)}" for s, f, _ in BAD])
def test_bad_hessian_input_is_one_line_before_any_work(script, flags, word, bad_input_files, capsys):
    """Run each script's real main as the command line does (errors.run_main): exit 2,
    one 'error:' line naming the problem, no traceback, no file written or changed."""
    import importlib
    tmp = str(bad_input_files)
    names = {"dirs": os.path.join(tmp, "dirs.h5"), "tmp": tmp, "existing": os.path.join(tmp, "spectrum.h5"),
             "text": os.path.join(tmp, "notes.txt")}
    flags = [f.format(**names) for f in flags]
    outputs = [] if any(o in flags for o in ("--spectrum_file", "--curvature_file")) else \
        ["--spectrum_file" if script != "layer_curvature.py" else "--curvature_file",
         os.path.join(tmp, "out.h5")]
    argv = ["--model", "digits_mlp", "--model_file", os.path.join(tmp, "mlp.t7"), "--max_samples", "20",
            "--threads", "1", "--no_progress"] + flags + outputs
    before = snapshot(tmp)
    main = importlib.import_module(script[:-3]).main
    with pytest.raises(SystemExit) as e:
        errors.run_main(main, argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and word in lines[0], err
    assert snapshot(tmp) == before
