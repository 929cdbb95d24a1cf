"""Permutation alignment (alignment.py, align.py, merging.py) and plot_surface --bn_update.

Oracles: a network's own logits (a permuted network must compute exactly the same
function), a permutation we applied ourselves (alignment must undo it exactly), the
permutation groups written out by hand for small models, BatchNorm statistics computed
by a plain train-mode forward pass, and the naive line's barrier on a trained wide pair.
"""
import copy
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import alignment as al
import model_loader
from cifar10.models.densenet import DenseNet
from conftest import REPO, assert_one_line_error, run_script
from errors import UserError, run_main


# ------------------------------------------------------------------ models
class Custom(nn.Module):
    """A model of its own: depthwise conv, a residual stream written with F ops, a
    concatenation, LayerNorm over the features and a functional flatten."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 16, 3, padding=1, groups=8)
        self.bn = nn.BatchNorm2d(16)
        self.pw = nn.Conv2d(16, 8, 1)
        self.side = nn.Conv2d(8, 4, 1)
        self.fc1 = nn.Linear(12 * 16, 24)
        self.norm = nn.LayerNorm(24)
        self.fc2 = nn.Linear(24, 24)
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        h = F.relu(self.stem(x))
        h = h + self.pw(F.relu(self.bn(self.dw(h))))
        h = torch.cat([h, torch.tanh(self.side(h))], dim=1)
        h = F.max_pool2d(h, 2)
        h = h.view(h.size(0), -1)  # shape queries on a moving tensor move nothing
        z = self.norm(self.fc1(h))
        z = z + F.gelu(self.fc2(z))
        return self.head(z.reshape(z.shape[0], z.size(1)))


class Unknown(nn.Module):
    """A transpose the graph analysis does not understand: what it touches stays fixed."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 16), nn.Linear(16, 16), nn.Linear(16, 10)

    def forward(self, x):
        h = F.relu(self.fc1(x.flatten(1)))
        h = F.relu(self.fc2(h.unsqueeze(2).transpose(1, 2).flatten(1)))
        return self.fc3(h)


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return self.fc(x.flatten(1))
        return -self.fc(x.flatten(1))


def _randomize_bn(net, seed):
    """BatchNorm with non-trivial statistics and affine parameters (a random-init model's
    are 0/1, which would hide a statistic permuted wrongly)."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.normal_(0, 0.2, generator=g)
            m.running_mean.normal_(0, 0.2, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
    return net.eval()


MODELS = {  # name -> (factory, input shape)
    "mlp": (lambda: model_loader.build_model("cifar10.models.digits:mlp_w32"), (1, 8, 8)),
    "digits_cnn": (lambda: model_loader.build_model("digits_cnn"), (1, 8, 8)),
    "vgg9": (lambda: model_loader.build_model("vgg9"), (3, 32, 32)),
    "resnet20": (lambda: model_loader.build_model("resnet20"), (3, 32, 32)),
    "resnet20_noshort": (lambda: model_loader.build_model("resnet20_noshort"), (3, 32, 32)),
    "densenet": (lambda: DenseNet([1, 2, 1, 1], growth=8), (3, 32, 32)),
    "custom": (Custom, (1, 8, 8)),
}


def _pair(name, seed_b=1):
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    a = _randomize_bn(factory(), 0)
    torch.manual_seed(seed_b)
    b = _randomize_bn(factory(), seed_b)
    x = torch.randn(32 if shape[0] == 1 else 8, *shape, generator=torch.Generator().manual_seed(2))
    return a, b, x


def _params(net):
    return [k for k, _ in net.named_parameters()]


def _logits(net, state, x):
    net = copy.deepcopy(net)
    net.load_state_dict(state)
    with torch.no_grad():
        return net.eval()(x).double()


def _assert_same_function(net, state_1, state_2, x):
    y1, y2 = _logits(net, state_1, x), _logits(net, state_2, x)
    assert y1.std() > 1e-3  # a network whose outputs do not vary could not tell
    assert (y1 - y2).abs().max() <= 1e-5 * y1.abs().max(), float((y1 - y2).abs().max())


# ------------------------------------------------------------------ fast: equivalence
def _cases(names, slow):
    """(name, method) pairs; those in ``slow`` (seconds each on 2 loaded cores) in the slow tier."""
    return [pytest.param(n, m, marks=[pytest.mark.slow] if (n, m) in slow else [])
            for n in names for m in ("weight", "activation")]


@pytest.mark.parametrize("name,method", _cases(MODELS, {("vgg9", "weight"), ("vgg9", "activation")}))
def test_aligned_network_computes_the_same_function(name, method, one_thread):
    a, b, x = _pair(name)
    spec = al.infer_spec(a, x[:2])
    state_a, state_b = a.state_dict(), b.state_dict()
    if method == "weight":
        perms, _ = al.weight_matching(spec, state_a, state_b, _params(a), max_sweeps=3)  # converged or not
    else:
        perms = al.activation_matching(spec, a, b, x)
    aligned = al.permute_state(state_b, spec, perms)
    assert al.moved_fraction(perms) > 0.5  # it did move units
    _assert_same_function(b, state_b, aligned, x)
    assert not spec.notes
    assert set(spec.unpermuted(_params(a))) <= {_params(a)[-1]}  # only the output bias stays
    if method == "weight":
        keys = _params(a)
        assert al.inner_product(state_a, aligned, keys) >= al.inner_product(state_a, state_b, keys)


@pytest.mark.parametrize("name,method", _cases(["mlp", "digits_cnn", "vgg9", "resnet20", "densenet", "custom"],
                                               {("vgg9", "activation")}))
def test_a_known_permutation_is_recovered_exactly(name, method, one_thread):
    a, _, x = _pair(name)
    spec = al.infer_spec(a, x[:2])
    rng = np.random.default_rng(7)
    truth = {g: rng.permutation(group.size) for g, group in spec.groups.items()}
    state_a = a.state_dict()
    state_b = al.permute_state(state_a, spec, truth)
    assert any(not torch.equal(state_a[k], state_b[k]) for k in state_a)
    b = copy.deepcopy(a)
    b.load_state_dict(state_b)
    perms = (al.weight_matching(spec, state_a, state_b, _params(a))[0] if method == "weight"
             else al.activation_matching(spec, a, b, x))
    aligned = al.permute_state(state_b, spec, perms)
    for k in state_a:
        assert torch.equal(aligned[k], state_a[k]), k


def test_groups_of_small_models_are_those_written_by_hand():
    def groups(name):
        a, _, x = _pair(name)
        spec = al.infer_spec(a, x[:2])
        return sorted(sorted((k, ax) for k, ax, _, _ in g.entries) for g in spec.groups.values())

    assert groups("digits_cnn") == [
        [("0.bias", 0), ("0.weight", 0), ("1.bias", 0), ("1.running_mean", 0), ("1.running_var", 0),
         ("1.weight", 0), ("3.weight", 1)],
        [("3.bias", 0), ("3.weight", 0), ("4.bias", 0), ("4.running_mean", 0), ("4.running_var", 0),
         ("4.weight", 0), ("8.weight", 1)]]
    a, _, x = _pair("digits_cnn")
    flat = [e for g in al.infer_spec(a, x[:2]).groups.values() for e in g.entries if e[0] == "8.weight"]
    assert flat == [("8.weight", 1, 0, 16)]  # flatten after the conv: 32 channels of 4x4 blocks
    # resnet20: one group per stage's residual stream (stem/shortcut convs, every block's
    # bn2, the next blocks' conv1 inputs) and one inside each of the 9 blocks
    res = groups("resnet20")
    assert len(res) == 12
    stream = next(g for g in res if ("bn1.weight", 0) in g)
    assert {("layer1.0.bn2.weight", 0), ("layer1.2.bn2.weight", 0), ("layer2.0.conv1.weight", 1),
            ("layer2.0.shortcut.0.weight", 1)} <= set(stream)
    assert ("layer2.0.bn2.weight", 0) not in stream
    assert len(groups("resnet20_noshort")) == 19  # no residual: every conv output its own group


def test_concatenation_and_depthwise_layouts():
    a, _, x = _pair("custom")
    spec = al.infer_spec(a, x[:2])
    fc1 = dict(spec.axes["fc1.weight"])[1]
    # the concatenation [h (8 channels), side (4)], each channel a block of 4x4 pixels
    assert [(n, inner) for _, n, inner in fc1] == [(8, 16), (4, 16)]
    stem = next(g for g, group in spec.groups.items() if ("stem.weight", 0, 0, 1) in group.entries)
    # the depthwise conv's 16 outputs follow its 8 inputs in blocks of 2, and so does the BN
    assert ("dw.weight", 0, 0, 2) in spec.groups[stem].entries
    assert ("bn.running_var", 0, 0, 2) in spec.groups[stem].entries
    assert ("pw.weight", 0, 0, 1) in spec.groups[stem].entries  # added into the stream


def test_a_pattern_not_understood_stays_fixed_and_is_reported():
    a, b = Unknown(), Unknown()
    x = torch.randn(16, 1, 8, 8)
    spec = al.infer_spec(a, x[:2])
    assert spec.notes and "unsqueeze" in " ".join(spec.notes)
    assert spec.unpermuted(_params(a)) == ["fc1.weight", "fc1.bias", "fc3.bias"]
    assert "fc2.weight" in spec.moving_keys()  # its output units still move
    assert 1 not in dict(spec.axes["fc2.weight"])  # its inputs do not
    perms, _ = al.weight_matching(spec, a.state_dict(), b.state_dict(), _params(a))
    aligned = al.permute_state(b.state_dict(), spec, perms)
    assert torch.equal(aligned["fc1.weight"], b.state_dict()["fc1.weight"])
    assert not torch.equal(aligned["fc2.weight"], b.state_dict()["fc2.weight"])
    _assert_same_function(b, b.state_dict(), aligned, x)


def test_an_untraceable_model_is_one_user_error():
    with pytest.raises(UserError, match="cannot be traced by torch.fx"):
        al.infer_spec(Untraceable(), torch.randn(2, 1, 8, 8))


# ------------------------------------------------------------------ command line
MODULE = textwrap.dedent("""
    import torch.nn as nn

    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            if x.sum() > 0:
                return self.fc(x.flatten(1))
            return -self.fc(x.flatten(1))

    def untraceable():
        return Untraceable()
""")


@pytest.fixture
def files(tmp_path, monkeypatch):
    """Random-init checkpoints in the original format: two digits_mlp (A, B), a copy of A,
    a 32-wide MLP (another architecture) and one of a model fx cannot trace."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "align_test_models.py").write_text(MODULE)
    out = {}
    for name, model, seed in (("a", "digits_mlp", 0), ("b", "digits_mlp", 1),
                              ("w", "cifar10.models.digits:mlp_w32", 0),
                              ("u", "align_test_models:untraceable", 0), ("u2", "align_test_models:untraceable", 1)):
        torch.manual_seed(seed)
        out[name] = str(tmp_path / f"{name}.t7")
        torch.save({"acc": 0.0, "epoch": 0, "state_dict": model_loader.build_model(model).state_dict()}, out[name])
    out["a_copy"] = str(tmp_path / "a_copy.t7")
    torch.save(torch.load(out["a"]), out["a_copy"])
    out["exists"] = str(tmp_path / "exists.t7")
    open(out["exists"], "w").write("keep me")
    return out


BAD = [  # (case, argv from the file names, what the error says)
    ("other architecture", ["--model_file", "a", "--model_file2", "w", "--out", "o.t7"], "is not a digits_mlp"),
    ("same file", ["--model_file", "a", "--model_file2", "a", "--out", "o.t7"], "same file"),
    ("same weights", ["--model_file", "a", "--model_file2", "a_copy", "--out", "o.t7"], "same weights"),
    ("output exists", ["--model_file", "a", "--model_file2", "b", "--out", "exists"], "--overwrite"),
    ("output is an input", ["--model_file", "a", "--model_file2", "b", "--out", "b", "--overwrite"],
     "one of the input"),
    ("no output", ["--model_file", "a", "--model_file2", "b"], "--out"),
    ("missing file", ["--model_file", "a", "--model_file2", "nothere", "--out", "o.t7"], "not found"),
    ("untraceable", ["--model", "align_test_models:untraceable", "--model_file", "u", "--model_file2", "u2",
                     "--out", "o.t7"], "torch.fx"),
    ("several without merge", ["--model_file", "a", "--model_file2", "b", "w", "--out", "o.t7"], "--merge"),
    ("merge out of range", ["--model_file", "a", "--model_file2", "b", "--out", "o.t7", "--merge", "2"], "[0, 1]"),
]


@pytest.mark.parametrize("case,argv,says", BAD, ids=[c[0] for c in BAD])
def test_bad_inputs_are_one_error_line_and_nothing_is_written(case, argv, says, files, tmp_path, capsys):
    import align
    argv = ["--model", "digits_mlp", *[files.get(a, a) for a in argv]]
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(SystemExit) as e:
        run_main(align.main, argv)
    assert e.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and says in err[0], err
    assert sorted(os.listdir(tmp_path)) == before
    assert open(files["exists"]).read() == "keep me"


def test_align_writes_a_checkpoint_of_the_same_function_and_its_report(files, tmp_path, capsys):
    import align
    out = str(tmp_path / "b_aligned.t7")
    align.main(["--model", "digits_mlp", "--model_file", files["a"], "--model_file2", files["b"],
                "--out", out, "--barrier", "--points", "3", "--max_samples", "200"])
    text = capsys.readouterr().out
    assert "largest logit difference" in text and "naive" in text and "aligned" in text
    state_b = model_loader.load("digits_mlp", files["b"]).state_dict()
    net = model_loader.load("digits_mlp", out)  # the original checkpoint format
    x = torch.randn(64, 1, 8, 8)
    _assert_same_function(net, state_b, net.state_dict(), x)
    rep = json.load(open(out + ".json"))
    assert rep["groups"][0]["size"] == 64 and rep["unpermuted"] == ["3.bias"]
    (r,) = rep["aligned"]
    assert r["logit_diff_relative"] <= 1e-5 and r["objective"][1] >= r["objective"][0]
    assert set(rep["barriers"]) == {"naive", "aligned", "t"}
    assert set(rep["barriers"]["aligned"]["barriers"]) == {"train_loss", "train_error", "test_loss", "test_error"}


def test_merge_of_a_network_with_a_permuted_copy_is_the_network(files, tmp_path):
    """B = a permuted A: aligned B is A, the barrier of the aligned line is zero and every
    merge (any T, or the mean of several) is A itself."""
    import align
    a = model_loader.load("digits_mlp", files["a"])
    a.load_state_dict({k: 6 * v for k, v in a.state_dict().items()})  # a random model with confident outputs
    files["a"] = str(tmp_path / "a6.t7")
    torch.save({"state_dict": a.state_dict()}, files["a"])
    spec = al.infer_spec(a, torch.randn(2, 1, 8, 8))
    perms = {g: np.random.default_rng(3).permutation(grp.size) for g, grp in spec.groups.items()}
    b = str(tmp_path / "perm.t7")
    torch.save({"state_dict": al.permute_state(a.state_dict(), spec, perms)}, b)
    out = str(tmp_path / "merged.t7")
    align.main(["--model", "digits_mlp", "--model_file", files["a"], "--model_file2", b, "--out", out,
                "--merge", "0.3", "--barrier", "--points", "5", "--max_samples", "200"])
    merged = model_loader.load("digits_mlp", out).state_dict()
    for k, v in a.state_dict().items():
        assert torch.allclose(merged[k], v, atol=1e-6, rtol=0), k
    rep = json.load(open(out + ".json"))
    assert abs(rep["barriers"]["aligned"]["barriers"]["train_loss"]["barrier_interp"]) < 1e-5
    naive, aligned = (rep["barriers"][k]["values"]["train_loss"] for k in ("naive", "aligned"))
    assert max(abs(u - v) for u, v in zip(naive, aligned)) > 0.1  # the naive line goes elsewhere
    assert rep["merge"]["t"] == 0.3 and rep["merge"]["models"] == 2
    # three models: A and two permuted copies, each aligned to A; their mean is A
    b2 = str(tmp_path / "perm2.t7")
    perms2 = {g: np.random.default_rng(4).permutation(grp.size) for g, grp in spec.groups.items()}
    torch.save({"state_dict": al.permute_state(a.state_dict(), spec, perms2)}, b2)
    align.main(["--model", "digits_mlp", "--model_file", files["a"], "--model_file2", b, b2, "--out", out,
                "--merge", "--overwrite", "--max_samples", "200"])
    merged = model_loader.load("digits_mlp", out).state_dict()
    for k, v in a.state_dict().items():
        assert torch.allclose(merged[k], v, atol=1e-6, rtol=0), k
    assert json.load(open(out + ".json"))["merge"]["models"] == 3


@pytest.mark.slow
def test_help_shows_every_default_and_an_untraceable_model_is_one_line(files):
    p = run_script(["align.py", "--help"], check=True)
    assert "--method" in p.stdout and "(default: weight)" in p.stdout and "(default: 10)" in p.stdout
    p = run_script([os.path.join(REPO, "align.py"), "--model", "align_test_models:untraceable",
                    "--model_file", files["u"], "--model_file2", files["u2"], "--out", "o.t7"],
                   cwd=os.path.dirname(files["u"]))
    assert p.returncode == 2 and "torch.fx" in assert_one_line_error(p)
    assert not os.path.exists(os.path.join(os.path.dirname(files["u"]), "o.t7"))


def _readme_block():
    text = open(os.path.join(REPO, "README.md")).read()
    start = text.index("## Permutation alignment")
    section = text[start:text.find("\n## ", start + 10)]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)[0]


@pytest.mark.slow
def test_readme_recipe_aligned_barrier_of_a_wide_pair_is_a_fifth_of_the_naive_one(tmp_path):
    """The README's recipe as written (two digits MLPs of width 512 trained by the toolkit):
    the aligned line's barrier is <= 0.2 of the naive line's (measured 0.05)."""
    block = _readme_block().replace("python ", f"{sys.executable} {REPO}/")
    p = subprocess.run(["bash", "-e", "-c", block], cwd=tmp_path, capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr
    rep = json.load(open(tmp_path / "runs" / "B_aligned.t7.json"))
    b = {k: rep["barriers"][k]["barriers"]["train_loss"]["barrier_interp"] for k in ("naive", "aligned")}
    assert b["naive"] > 0.3 and b["aligned"] <= 0.2 * b["naive"], b
    merged = json.load(open(tmp_path / "runs" / "merged.t7.json"))["merge"]
    assert merged["test_acc"] > 90, merged
    assert os.path.exists(tmp_path / "runs" / "aligned_line.h5")


# ------------------------------------------------------------------ plot_surface --bn_update
def test_plot_surface_bn_update_reestimates_the_statistics_at_each_point(tmp_path, one_thread):
    import h5py

    import plot_surface
    from dataloader import _digits
    from evaluation import Evaluator, get_loss_fn
    torch.manual_seed(0)
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(str(tmp_path / f"c{seed}.t7"))
        torch.save({"state_dict": _randomize_bn(model_loader.build_model("digits_cnn"), seed).state_dict()},
                   paths[-1])
    surf = str(tmp_path / "s.h5")
    argv = ["--model", "digits_cnn", "--model_file", paths[0], "--model_file2", paths[1], "--dir_type", "states",
            "--x=0:1:3", "--xnorm", "", "--xignore", "", "--surf_file", surf, "--no_progress", "--bn_update", "1",
            "--batch_size", "64", "--engine", "eager"]
    plot_surface.main(argv)
    with h5py.File(surf) as f:
        loss = f["train_loss"][:]
        assert json.loads(f.attrs["settings"])["bn_update"] == 1
    # oracle: at t = 0 and 1 the end model, its statistics those of one train-mode batch of 64
    data = _digits(False)
    for t, path in ((0, paths[0]), (2, paths[1])):
        net = model_loader.load("digits_cnn", path)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 1.0
        with torch.no_grad():
            net.train()(data.train_x[:64])
        expect = Evaluator(net.eval(), data.train_x, data.train_y, get_loss_fn("crossentropy"), 64,
                           torch.device("cpu"), engine="eager")()[0]
        assert loss[t] == pytest.approx(expect, rel=1e-5)
    with pytest.raises(UserError, match="bn_update"):  # a resume must match it
        plot_surface.main([a if a != "1" else "2" for a in argv])


# ------------------------------------------------------------ the trained curve as a row
@pytest.mark.slow
def test_barrier_table_takes_the_trained_curve_of_mode_connectivity(tmp_path):
    """align.py --barrier --curve_file: the curve row holds mode_connectivity.py's own values
    and their barrier heights by the definitions written here; a file of another pair is refused."""
    import h5py
    paths = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        paths.append(str(tmp_path / f"m{seed}.t7"))
        torch.save({"state_dict": model_loader.build_model("digits_mlp").state_dict()}, paths[-1])
    common = ["--model", "digits_mlp", "--max_samples", "300"]
    mc_out = str(tmp_path / "mc")
    run_script(["mode_connectivity.py", *common, "--threads", "1", "--model_file", paths[0], "--model_file2", paths[1],
                "--out_dir", mc_out, "--epochs", "1", "--points", "5", "--no_progress"], check=True)
    curve_file = os.path.join(mc_out, "mode_connectivity.h5")
    out = str(tmp_path / "B_aligned.t7")
    run_script(["align.py", *common, "--model_file", paths[0], "--model_file2", paths[1], "--out", out,
                "--barrier", "--points", "3", "--curve_file", curve_file], check=True)
    row = json.load(open(out + ".json"))["barriers"]["curve"]
    with h5py.File(curve_file) as f:
        t, loss = f["xcoordinates"][:], f["curve_train_loss"][:]
    np.testing.assert_allclose(row["values"]["train_loss"], loss)
    above_line = loss - ((1 - t) * loss[0] + t * loss[-1])
    assert row["barriers"]["train_loss"]["barrier_interp"] == pytest.approx(above_line.max())
    assert row["barriers"]["train_loss"]["barrier_max"] == pytest.approx(loss.max() - max(loss[0], loss[-1]))
    # the curve of the pair (A, B) does not belong in the table of (A, C)
    other = str(tmp_path / "C_aligned.t7")
    p = run_script(["align.py", *common, "--model_file", paths[0], "--model_file2", paths[2], "--out", other,
                    "--barrier", "--points", "3", "--curve_file", curve_file])
    assert p.returncode == 2 and "other checkpoints" in assert_one_line_error(p)
    assert not os.path.exists(other)
