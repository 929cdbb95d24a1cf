"""The evaluation engine: the fused (BatchNorm-folded) path equals eager evaluation,
falls back to eager where it cannot fold, several grid points per pass equal one at a
time, and bad loss functions are one-line errors."""
import os
import re
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import REPO, assert_one_line_error, run_script

import model_loader
import net_plotter
from cifar10.models.densenet import DenseNet
from errors import UserError
from evaluation import Evaluator, get_loss_fn
from inference import FusedModel

CPU = torch.device("cpu")


def _randomize_bn(net, seed=0):
    """BN statistics and affine weights away from their initial values, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return net.eval()


def _setup(net, dir_type, n=16, shape=(3, 32, 32), seed=0):
    torch.manual_seed(seed)
    _randomize_bn(net, seed)
    x = torch.randn(n, *shape)
    y = torch.randint(0, 10, (n,))
    gen = torch.Generator().manual_seed(seed + 1)
    ignore = "" if dir_type == "states" else "biasbn"  # states: BN statistics move too
    dx = net_plotter.random_direction(net, dir_type, "filter", ignore, gen)
    dy = net_plotter.random_direction(net, dir_type, "filter", ignore, gen)
    return x, y, net_plotter.Perturbation(net, dir_type, dx, dy)


def _tiny_densenet():
    return DenseNet([1, 1, 1, 1], growth=4)


ZOO = {"resnet20": lambda: model_loader.build_model("resnet20"),
       "resnet20_noshort": lambda: model_loader.build_model("resnet20_noshort"),
       "vgg9": lambda: model_loader.build_model("vgg9"),
       "densenet_tiny": _tiny_densenet,
       "digits_cnn": lambda: model_loader.build_model("digits_cnn")}
POINTS = [(0.4, -0.3), (-0.6, 0.2), (0.0, 0.0)]


@pytest.mark.slow
@pytest.mark.parametrize("model, dir_type", [
    ("resnet20", "weights"), ("resnet20", "states"), ("resnet20_noshort", "weights"),
    ("resnet20_noshort", "states"), ("vgg9", "states"), ("densenet_tiny", "weights"),
    ("densenet_tiny", "states"), ("digits_cnn", "weights"), ("digits_cnn", "states")])
def test_fused_equals_eager_after_moves(model, dir_type):
    net = ZOO[model]()
    shape = (1, 8, 8) if model.startswith("digits") else (3, 32, 32)
    x, y, move = _setup(net, dir_type, shape=shape)
    loss = get_loss_fn("crossentropy")
    eager = Evaluator(net, x, y, loss, 8, CPU, engine="eager")
    fused = Evaluator(net, x, y, loss, 8, CPU, engine="fused")
    assert eager.path == "eager"
    assert fused.path.startswith("fused ("), fused.path
    for p in POINTS:
        move.set(*p)
        (le, ae), (lf, af) = eager(), fused()
        assert abs(lf - le) <= 1e-5 * abs(le), (p, le, lf)
        assert af == ae
    # the fold really runs: every BN that follows a conv/linear is folded (DenseNet: only
    # the bottleneck's conv1 -> bn2; its other BNs come before a ReLU and a conv)
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    assert len(fused._fused.folds) == (4 if model == "densenet_tiny" else n_bn)


@pytest.mark.slow
def test_fold_counts_and_paths_in_the_zoo():
    net = _randomize_bn(model_loader.build_model("resnet20"))
    f = FusedModel(net, torch.randn(2, 3, 32, 32))
    assert len(f.folds) == 21 and f.describe() == "fused (21 conv+bn folded)"  # 19 + 2 shortcuts
    vgg = _randomize_bn(model_loader.build_model("vgg9"))
    assert FusedModel(vgg, torch.randn(2, 3, 32, 32)).describe() == "fused (7 conv+bn, 1 linear+bn folded)"
    mlp = model_loader.build_model("digits_mlp").eval()
    assert FusedModel(mlp, torch.randn(2, 1, 8, 8)).describe() == "eager (no foldable layers)"


class _Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        out = self.bn(self.conv(x))
        if out.mean() > 0:
            out = out * 2
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


class _SharedConvOutput(nn.Module):
    """The conv output feeds the BN *and* a second branch: folding would change it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        c = self.conv(x)
        return self.fc(F.adaptive_avg_pool2d(self.bn(c) + c, 1).flatten(1))


@pytest.mark.parametrize("cls, reason", [(_Untraceable, "does not trace"),
                                         (_SharedConvOutput, "no foldable layers")])
def test_unrecognised_models_fall_back_to_eager_exactly(cls, reason):
    torch.manual_seed(0)
    net = _randomize_bn(cls())
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 10, (6,))
    loss = get_loss_fn("crossentropy")
    auto = Evaluator(net, x, y, loss, 4, CPU, engine="auto")
    assert auto.path.startswith("eager (") and reason in auto.path, auto.path
    assert auto() == Evaluator(net, x, y, loss, 4, CPU, engine="eager")()


@pytest.mark.slow
def test_folded_twin_shares_the_unfolded_layers_and_never_changes_the_net():
    net = _randomize_bn(model_loader.build_model("digits_cnn"))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ptrs = {k: v.data_ptr() for k, v in net.state_dict().items()}
    x = torch.randn(5, 1, 8, 8)
    f = FusedModel(net, x[:2])
    f.set_channels_last(True)
    f.refresh()
    with torch.no_grad():
        torch.testing.assert_close(f(f.prepare_input(x)), net(x), rtol=1e-5, atol=1e-5)
        net[8].weight.add_(0.5)  # the linear head is shared: the twin sees the move at once
        torch.testing.assert_close(f(x), net(x), rtol=1e-5, atol=1e-5)
        net[8].weight.copy_(before["8.weight"])
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) and ptrs[k] == after[k].data_ptr() for k in before)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fused", "eager"])
@pytest.mark.parametrize("model, dir_type", [("resnet20", "weights"), ("resnet20_noshort", "states"),
                                             ("densenet_tiny", "states"), ("digits_cnn", "weights")])
def test_several_points_per_pass_equal_one_at_a_time(model, dir_type, engine):
    net = ZOO[model]()
    shape = (1, 8, 8) if model.startswith("digits") else (3, 32, 32)
    x, y, move = _setup(net, dir_type, n=12, shape=shape)
    loss = get_loss_fn("crossentropy")
    ev = Evaluator(net, x, y, loss, 8, CPU, engine=engine)
    one = []
    for p in POINTS:
        move.set(*p)
        one.append(ev())
    move.set(0.9, 0.9)
    many = ev.evaluate_points(move, POINTS)
    assert getattr(ev, "_vmap_ok", True), "the stacked pass fell back to one at a time"
    for (lm, am), (lo, ao) in zip(many, one):
        assert abs(lm - lo) <= 1e-6 * abs(lo) and am == ao, (engine, many, one)
    assert ev() == one[-1]  # the net is left at the last point
    assert ev.probe_points_per_pass(move, (1, 2)) in (1, 2)
    assert ev() == one[-1]  # the probe leaves the net where it was


def test_perturbation_stacked_equals_set():
    net = _randomize_bn(model_loader.build_model("digits_cnn"))
    _, _, move = _setup(net, "states", shape=(1, 8, 8))
    stacks = move.stacked(POINTS)
    for j, p in enumerate(POINTS):
        move.set(*p)
        for s, t in zip(stacks, move.targets):
            assert torch.equal(s[j], t)


# ------------------------------------------------------------------- losses
def _loss_module(tmp_path, monkeypatch, body):
    (tmp_path / "my_losses.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_losses", None)


@pytest.mark.parametrize("body, fragment", [
    ("def fn(out, y):\n    return out[:, :2]\n", "returned shape (4, 2) for a batch of 4"),
    ("def fn(out, y):\n    return out.new_zeros(3, 3)\n", "returned shape (3, 3) for a batch of 4"),
    ("def fn(out, y):\n    raise ValueError('boom')\n", "raised ValueError: boom"),
    ("def fn(out, y):\n    return 1.5\n", "returned float"),
])
def test_custom_loss_of_the_wrong_shape_is_a_one_line_error(tmp_path, monkeypatch, body, fragment):
    _loss_module(tmp_path, monkeypatch, body)
    net = model_loader.build_model("digits_mlp")
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    with pytest.raises(UserError) as e:
        Evaluator(net, x, y, get_loss_fn("my_losses:fn"), 4, CPU)
    assert "--loss_name my_losses:fn" in str(e.value) and fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_custom_loss_per_sample_and_mean_agree_with_crossentropy(tmp_path, monkeypatch):
    _loss_module(tmp_path, monkeypatch, """
        import torch.nn.functional as F
        def per_sample(out, y):
            return F.cross_entropy(out, y, reduction="none")
        def mean(out, y):
            return F.cross_entropy(out, y)
    """)
    net = model_loader.build_model("digits_mlp")
    x, y = torch.randn(10, 1, 8, 8), torch.randint(0, 10, (10,))
    ref = Evaluator(net, x, y, get_loss_fn("crossentropy"), 4, CPU)()
    for fn in ("per_sample", "mean"):
        got = Evaluator(net, x, y, get_loss_fn(f"my_losses:{fn}"), 4, CPU)()
        assert got[0] == pytest.approx(ref[0], rel=1e-6) and got[1] == ref[1]


class _Squeezed(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.shape = shape

    def forward(self, x):
        return self.fc(x.flatten(1)).reshape(len(x), *self.shape)


@pytest.mark.parametrize("loss", ["crossentropy", "mse"])
def test_builtin_losses_refuse_wrong_outputs_and_labels(loss):
    x = torch.randn(4, 1, 8, 8)
    with pytest.raises(UserError, match=r"shape \(batch, classes\).*\(4, 5, 2\)"):
        Evaluator(_Squeezed((5, 2)), x, torch.zeros(4, dtype=torch.long), get_loss_fn(loss), 4, CPU)
    with pytest.raises(UserError, match="labels run from 0 to 12 but the model has 10 outputs"):
        Evaluator(_Squeezed((10,)), x, torch.tensor([0, 1, 12, 3]), get_loss_fn(loss), 4, CPU)


@pytest.mark.slow
def test_plot_surface_reports_a_bad_custom_loss_in_one_line(tmp_path):
    (tmp_path / "bad_loss.py").write_text("def fn(out, y):\n    return out[:, :2]\n")
    p = run_script(["plot_surface.py", "--model", "digits_mlp", "--x=-1:1:2",
                    "--loss_name", "bad_loss:fn", "--max_samples", "64", "--no_progress",
                    "--dir_file", tmp_path / "d.h5", "--surf_file", tmp_path / "s.h5"],
                   env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}, timeout=300)
    line = assert_one_line_error(p)
    assert re.search(r"--loss_name bad_loss:fn returned shape \(\d+, 2\) for a batch of \d+", line), line


# ------------------------------------------------------------------ benches
@pytest.mark.slow
def test_bench_gpu_smoke_mode_writes_the_table(tmp_path):
    out = tmp_path / "gpu.md"
    p = run_script(["bench/bench_gpu.py", "--smoke", "--out", out], timeout=600,
                   env={"OMP_NUM_THREADS": "2"})
    assert p.returncode == 0, p.stderr
    text = out.read_text()
    for row in ("| fp32 | eager |", "| fp32 | fused |", "| bf16 | fused |", "| fp32 | fused, K=2 |"):
        assert row in text, text
    assert "51x51" in text and "floor" in text
