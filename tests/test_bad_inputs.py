"""Every bad input is one line that says what to do, nothing damaged, nothing blocked.

ONE table of cases over the classes: damaged checkpoints, custom model / data set / loss
that cannot be imported or misbehave, data flags and data files, model/data mismatch,
training flags, projection and plot_trajectory inputs, demo output paths. Each case runs
the script's ``main`` in this process through ``errors.run_main`` (fast) and asserts:
exit status 2, exactly one ``error:`` line that contains the needle, no traceback, the
case's own files and every other file of the workspace byte-identical, and no new file
(no surface or direction file left behind that would block the corrected command).
A few cases also run as real subprocesses, end to end.
"""
import contextlib
import io
import os
import pickle
import textwrap

import pytest
import torch

from conftest import COMPAT, REPO, assert_one_line_error, run_script, snapshot, write_cifar_batches

pytestmark = pytest.mark.slow

RELEASED = os.path.join(COMPAT, "resnet56_sgd_lr=0.1_bs=128_wd=0.0005_model_300.t7")
GRID = ["--x=-1:1:2", "--no_progress", "--surf_file", "out/s.h5", "--dir_file", "out/d.h5"]
PS = ["plot_surface"]
TRAIN = ["train", "--epochs", "1", "--save", "nets"]
DIGITS_TRAIN = TRAIN + ["--model", "digits_cnn"]


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch evil_ran",))


def _flip(data, pos, n=8):
    b = bytearray(data)
    for k in range(n):
        b[pos + k] ^= 0xA5
    return bytes(b)


def _write(path, text):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))


def _ckpt(path, model, seed=0, nan=False):
    from model_loader import build_model
    torch.manual_seed(seed)
    sd = build_model(model).state_dict()
    if nan:
        next(v for v in sd.values() if v.is_floating_point()).fill_(float("nan"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"acc": 10.0, "epoch": 3, "state_dict": sd}, path)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The workspace every case runs in (its working directory)."""
    root = str(tmp_path_factory.mktemp("ws"))
    j = lambda *p: os.path.join(root, *p)  # noqa: E731
    _ckpt(j("ck", "good.t7"), "digits_cnn")
    _ckpt(j("ck", "resnet20.t7"), "resnet20")
    good = open(j("ck", "good.t7"), "rb").read()
    legacy = open(RELEASED, "rb").read()
    for name, data in {"empty.t7": b"", "text.t7": b"this is not a checkpoint\n" * 4,
                       "trunc.t7": good[:len(good) // 2], "head.t7": good[:100],
                       "flipped.t7": _flip(good, 200),
                       "flipped_data.t7": _flip(good, len(good) - 300),
                       "legacy_trunc.t7": legacy[:len(legacy) // 2],
                       "legacy_flip.t7": _flip(legacy, 400)}.items():
        with open(j("ck", name), "wb") as f:
            f.write(data)
    torch.save({"state_dict": torch.load(j("ck", "good.t7"), weights_only=True)["state_dict"],
                "payload": _Evil()}, j("ck", "evil.t7"))
    os.makedirs(j("ck", "folder.t7"))
    # optimizer states: of another model, and not one at all
    from model_loader import build_model
    net = build_model("resnet20")
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    torch.save({"optimizer": opt.state_dict()}, j("ck", "opt_resnet20.t7"))
    torch.save({"nothing": 1}, j("ck", "opt_none.t7"))
    # a trajectory of three digits_cnn checkpoints, two-only and diverged variants
    for e in range(3):
        _ckpt(j("run", f"model_{e}.t7"), "digits_cnn", seed=e)
    _ckpt(j("run2", "model_0.t7"), "digits_cnn", seed=0)
    _ckpt(j("run2", "model_1.t7"), "digits_cnn", seed=1)
    _ckpt(j("run_nan", "model_1.t7"), "digits_cnn", seed=1, nan=True)
    # CIFAR folders: good, crafted, text, wrong shape, one batch missing
    for name in ("cifar", "cifar_evil", "cifar_text", "cifar_shape", "cifar_missing"):
        write_cifar_batches(j(name), n_train=10, n_test=5)
    batch = lambda name: j(name, "cifar-10-batches-py", "data_batch_1")  # noqa: E731
    with open(batch("cifar_evil"), "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, f, protocol=2)
    with open(batch("cifar_text"), "w") as f:
        f.write("not a pickle")
    with open(batch("cifar_shape"), "wb") as f:
        import numpy as np
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f, protocol=2)
    os.remove(batch("cifar_missing"))
    # data files for --trainloader
    g = torch.Generator().manual_seed(0)
    os.makedirs(j("tl"))
    os.makedirs(j("tl_other"))
    torch.save({"x": torch.randn(20, 1, 8, 8, generator=g), "y": torch.arange(20) % 10},
               j("tl", "train.t7"))
    torch.save({"x": torch.randn(20, 1, 8, 8, generator=g), "y": torch.arange(20) % 10},
               j("tl_other", "train.t7"))  # same file name, other data
    torch.save({"a": 1}, j("tl", "wrong.t7"))
    with open(j("tl", "text.t7"), "w") as f:
        f.write("x,y\n1,2\n")
    # the user's modules
    _write(j("syntax_err.py"), "def net(:\n    pass\n")
    _write(j("raises_at_import.py"), "raise RuntimeError('cannot configure the cluster')\n")
    _write(j("dep_missing.py"), "import nonexistent_pkg_q7\n")
    _write(j("factories.py"), """
        import torch
        NOT_CALLABLE = 3
        class Raises(torch.nn.Module):
            def forward(self, x):
                raise ValueError("this model cannot run")
        class Pair(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(64, 10)
            def forward(self, x):
                return self.lin(x.flatten(1)), 0
        def raises():
            raise RuntimeError("factory broke")
        def returns_int():
            return 3
        def three_classes():
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        def wrong_input():
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(100, 10))
        def forward_raises():
            return Raises()
        def tuple_output():
            return Pair()
        def exits():
            raise SystemExit(3)
    """)
    _write(j("datamods.py"), """
        import torch
        def raises():
            raise OSError("the data server is down")
        def three():
            return 1, 2, 3
        def labels_2d():
            x = torch.randn(10, 1, 8, 8)
            return (x, torch.zeros(10, 2)), (x, torch.zeros(10, 2))
        def empty_test():
            x = torch.randn(10, 1, 8, 8)
            return (x, torch.arange(10)), (x[:0], torch.arange(0))
        def not_pairs():
            return "train", "test"
    """)
    _write(j("lossmods.py"), "import torch\n")
    # files for output paths
    _write(j("afile"), "a file\n")
    os.makedirs(j("out"))
    os.makedirs(j("adir"))
    # an existing surface computed on tl/train.t7 (data identified by content)
    import plot_surface
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        plot_surface.main(["--model", "digits_cnn", "--model_file", j("ck", "good.t7"),
                           "--x=-1:1:2", "--no_progress", "--trainloader", j("tl", "train.t7"),
                           "--surf_file", j("out", "tl.h5"), "--dir_file", j("out", "tl_dir.h5")])
    assert os.path.isfile(j("out", "tl.h5"))
    return root


def _case(id, argv, needle, keep=()):
    return pytest.param(argv, needle, keep, id=id)


CK = "ck/"
CASES = [
    # --- checkpoints: damaged ones are damaged (no --unsafe_load advice), the rest as they are
    _case("ckpt-empty", PS + ["--model_file", CK + "empty.t7"] + GRID, "damaged", [CK + "empty.t7"]),
    _case("ckpt-text", PS + ["--model_file", CK + "text.t7"] + GRID, "damaged", [CK + "text.t7"]),
    _case("ckpt-truncated-zip", PS + ["--model_file", CK + "trunc.t7"] + GRID, "damaged"),
    _case("ckpt-zip-head-only", PS + ["--model_file", CK + "head.t7"] + GRID, "damaged"),
    _case("ckpt-byte-corrupted-pickle", PS + ["--model_file", CK + "flipped.t7"] + GRID, "damaged"),
    _case("ckpt-byte-corrupted-tensor", PS + ["--model_file", CK + "flipped_data.t7"] + GRID, "damaged"),
    _case("ckpt-legacy-truncated", PS + ["--model", "resnet56", "--model_file", CK + "legacy_trunc.t7",
                                            "--datapath", "cifar"] + GRID, "damaged"),
    _case("ckpt-legacy-corrupted", PS + ["--model", "resnet56", "--model_file", CK + "legacy_flip.t7",
                                             "--datapath", "cifar"] + GRID, "damaged"),
    _case("ckpt-code", PS + ["--model_file", CK + "evil.t7"] + GRID, "--unsafe_load", [CK + "evil.t7"]),
    _case("ckpt-missing", PS + ["--model_file", CK + "nope.t7"] + GRID, "not found"),
    _case("ckpt-folder", PS + ["--model_file", CK + "folder.t7"] + GRID, "ck/folder.t7"),
    _case("ckpt-other-model", PS + ["--model_file", CK + "resnet20.t7"] + GRID, "does not fit this model"),
    _case("ckpt2-missing", PS + ["--model_file", CK + "good.t7", "--model_file2", CK + "nope.t7"] + GRID,
          "not found"),
    _case("ckpt2-damaged", PS + ["--model_file", CK + "good.t7", "--model_file2", CK + "trunc.t7"] + GRID,
          "damaged"),
    _case("ckpt3-empty", PS + ["--model_file", CK + "good.t7", "--model_file2", "run/model_1.t7",
                               "--model_file3", CK + "empty.t7", "--y=-1:1:2"] + GRID, "damaged"),
    # --- custom model: spec, import, factory, forward
    _case("model-colon", PS + ["--model", ":"] + GRID, "is not package.module:name"),
    _case("model-no-attr", PS + ["--model", "factories:"] + GRID, "is not package.module:name"),
    _case("model-dots", PS + ["--model", "a..b:net"] + GRID, "is not package.module:name"),
    _case("model-empty", PS + ["--model", ""] + GRID, "--model is empty"),
    _case("model-unknown-zoo", PS + ["--model", "vgg99"] + GRID, "unknown --model 'vgg99'"),
    _case("model-no-module", PS + ["--model", "nosuchmod_q7:net"] + GRID, "no module named 'nosuchmod_q7'"),
    _case("model-syntax-error", PS + ["--model", "syntax_err:net"] + GRID, "syntax error in"),
    _case("model-raises-at-import", PS + ["--model", "raises_at_import:net"] + GRID,
          "cannot configure the cluster"),
    _case("model-missing-dependency", PS + ["--model", "dep_missing:net"] + GRID, "nonexistent_pkg_q7"),
    _case("model-missing-name", PS + ["--model", "factories:missing"] + GRID, "has no 'missing'"),
    _case("model-not-callable", PS + ["--model", "factories:NOT_CALLABLE"] + GRID, "not a function"),
    _case("model-factory-raises", PS + ["--model", "factories:raises"] + GRID, "factory broke"),
    _case("model-factory-exits", PS + ["--model", "factories:exits"] + GRID, "SystemExit"),
    _case("model-returns-int", PS + ["--model", "factories:returns_int"] + GRID, "must return a torch.nn.Module"),
    _case("model-wrong-classes", PS + ["--model", "factories:three_classes"] + GRID, "gives 3 outputs"),
    _case("model-wrong-input", PS + ["--model", "factories:wrong_input"] + GRID, "cannot take the images"),
    _case("model-forward-raises", PS + ["--model", "factories:forward_raises"] + GRID, "this model cannot run"),
    _case("model-tuple-output", PS + ["--model", "factories:tuple_output"] + GRID, "must return (batch, classes)"),
    # --- model/data mismatch (the data set follows the model unless given)
    _case("mismatch-vgg9-digits", PS + ["--model", "vgg9", "--dataset", "digits"] + GRID,
          "expects 3-channel 32x32 images"),
    _case("mismatch-digits-cifar", PS + ["--model", "digits_cnn", "--dataset", "cifar10", "--datapath", "cifar"]
          + GRID, "expects 1-channel 8x8 images"),
    _case("mismatch-resnet56-custom-data", PS + ["--model", "resnet56", "--dataset", "datamods:empty_test"]
          + GRID, "is empty"),
    _case("vgg9-defaults-to-cifar", PS + ["--model", "vgg9", "--datapath", "adir"] + GRID, "CIFAR-10 not found"),
    # --- data
    _case("data-unknown", PS + ["--dataset", "imagenet"] + GRID, "unknown --dataset"),
    _case("data-no-module", PS + ["--dataset", "nosuchmod_q7:fn"] + GRID, "no module named"),
    _case("data-raises", PS + ["--dataset", "datamods:raises"] + GRID, "the data server is down"),
    _case("data-three", PS + ["--dataset", "datamods:three"] + GRID, "must return (train, test)"),
    _case("data-labels-2d", PS + ["--dataset", "datamods:labels_2d"] + GRID, "one integer label per image"),
    _case("data-not-pairs", PS + ["--dataset", "datamods:not_pairs"] + GRID, "(images, labels)"),
    _case("data-colon", PS + ["--dataset", ":"] + GRID, "is not package.module:name"),
    _case("data-syntax-error", PS + ["--dataset", "syntax_err:data"] + GRID, "syntax error in"),
    _case("data-raises-at-import", PS + ["--dataset", "raises_at_import:data"] + GRID,
          "cannot configure the cluster"),
    _case("cifar-crafted", PS + ["--model", "vgg9", "--datapath", "cifar_evil"] + GRID,
          "which a CIFAR-10 python batch never holds"),
    _case("cifar-text", PS + ["--model", "vgg9", "--datapath", "cifar_text"] + GRID, "not a CIFAR-10 python batch"),
    _case("cifar-shape", PS + ["--model", "vgg9", "--datapath", "cifar_shape"] + GRID, "data shape"),
    _case("cifar-missing-batch", PS + ["--model", "vgg9", "--datapath", "cifar_missing"] + GRID, "data_batch_1"),
    _case("trainloader-missing", PS + ["--trainloader", "tl/nope.t7"] + GRID, "not found"),
    _case("trainloader-text", PS + ["--trainloader", "tl/text.t7"] + GRID, "damaged or not a torch.save file"),
    _case("trainloader-wrong", PS + ["--trainloader", "tl/wrong.t7"] + GRID, "must hold"),
    _case("max-samples-negative", PS + ["--max_samples", "-1"] + GRID, "--max_samples"),
    _case("split-idx", PS + ["--data_split", "2", "--split_idx", "2"] + GRID, "--split_idx"),
    _case("data-same-name-other-content", PS + ["--model_file", CK + "good.t7", "--x=-1:1:2", "--no_progress",
                                                "--trainloader", "tl_other/train.t7", "--surf_file", "out/tl.h5",
                                                "--dir_file", "out/tl_dir.h5"], "data_hash",
          ["out/tl.h5", "out/tl_dir.h5"]),
    # --- custom loss
    _case("loss-no-module", PS + ["--loss_name", "nosuchmod_q7:f"] + GRID, "no module named"),
    _case("loss-colon", PS + ["--loss_name", ":"] + GRID, "is not package.module:name"),
    _case("loss-missing-name", PS + ["--loss_name", "lossmods:nope"] + GRID, "has no 'nope'"),
    _case("loss-syntax-error", PS + ["--loss_name", "syntax_err:loss"] + GRID, "syntax error in"),
    _case("loss-raises-at-import", PS + ["--loss_name", "raises_at_import:loss"] + GRID,
          "cannot configure the cluster"),
    # --- training
    _case("train-lr-negative", DIGITS_TRAIN + ["--lr", "-0.1"], "--lr must be"),
    _case("train-lr-nan", DIGITS_TRAIN + ["--lr", "nan"], "--lr must be"),
    _case("train-momentum-negative", DIGITS_TRAIN + ["--momentum", "-0.5"], "--momentum must be"),
    _case("train-momentum-nan", DIGITS_TRAIN + ["--momentum", "nan"], "--momentum must be"),
    _case("train-wd-negative", DIGITS_TRAIN + ["--weight_decay=-1e-4"], "--weight_decay must be"),
    _case("train-wd-nan", DIGITS_TRAIN + ["--weight_decay", "nan"], "--weight_decay must be"),
    _case("train-wd-inf", DIGITS_TRAIN + ["--weight_decay", "inf"], "--weight_decay must be"),
    _case("train-batch-size", DIGITS_TRAIN + ["--batch_size", "0"], "--batch_size must be"),
    _case("train-epochs", DIGITS_TRAIN + ["--epochs", "-1"], "--epochs must be"),
    _case("train-save-epoch", DIGITS_TRAIN + ["--save_epoch", "0"], "--save_epoch must be"),
    _case("train-label-corrupt-nan", DIGITS_TRAIN + ["--label_corrupt_prob", "nan"], "--label_corrupt_prob"),
    _case("train-save-is-file", ["train", "--model", "digits_cnn", "--epochs", "1", "--save", "afile"],
          "is a file", ["afile"]),
    _case("train-save-under-file", ["train", "--model", "digits_cnn", "--epochs", "1", "--save", "afile/nets"],
          "is a file", ["afile"]),
    _case("train-resume-model-damaged", DIGITS_TRAIN + ["--resume_model", CK + "trunc.t7"], "damaged"),
    _case("train-resume-model-missing", DIGITS_TRAIN + ["--resume_model", CK + "nope.t7"], "not found"),
    _case("train-resume-model-other", DIGITS_TRAIN + ["--resume_model", CK + "resnet20.t7"],
          "does not fit this model"),
    _case("train-resume-opt-damaged", DIGITS_TRAIN + ["--resume_model", CK + "good.t7", "--resume_opt",
                                                      CK + "text.t7"], "damaged or not an optimizer state"),
    _case("train-resume-opt-other-model", DIGITS_TRAIN + ["--resume_model", CK + "good.t7", "--resume_opt",
                                                          CK + "opt_resnet20.t7"], "optimizer state"),
    _case("train-resume-opt-not-opt", DIGITS_TRAIN + ["--resume_model", CK + "good.t7", "--resume_opt",
                                                      CK + "opt_none.t7"], "holds no {'optimizer'"),
    _case("train-resume-opt-alone", DIGITS_TRAIN + ["--resume_opt", CK + "opt_none.t7"], "needs --resume_model"),
    _case("train-mismatch", TRAIN + ["--model", "vgg9", "--dataset", "digits"], "expects 3-channel 32x32"),
    _case("train-custom-model-raises", TRAIN + ["--model", "factories:raises"], "factory broke"),
    # --- projection
    _case("proj-folder-missing", ["projection", "--model_folder", "nope", "--max_epoch", "2"], "is not a folder"),
    _case("proj-checkpoints-missing", ["projection", "--model_folder", "run", "--max_epoch", "5"],
          "checkpoints are missing"),
    _case("proj-two-checkpoints", ["projection", "--model_files", "run2/model_0.t7", "run2/model_1.t7"],
          "at least 3 checkpoints"),
    _case("proj-no-match", ["projection", "--model_files", "run/zz_*.t7"], "no file matches"),
    _case("proj-damaged", ["projection", "--model_files", "run/model_0.t7", "run/model_1.t7", CK + "empty.t7"],
          "damaged"),
    _case("proj-other-model", ["projection", "--model_files", "run/model_0.t7", "run/model_1.t7",
                               CK + "resnet20.t7"], "does not fit this model"),
    _case("proj-diverged", ["projection", "--model_files", "run/model_0.t7", "run_nan/model_1.t7",
                            "run/model_2.t7"], "NaN or infinite"),
    _case("proj-margin-nan", ["projection", "--model_folder", "run", "--max_epoch", "2", "--margin", "nan"],
          "--margin"),
    _case("proj-margin-negative", ["projection", "--model_folder", "run", "--max_epoch", "2", "--margin", "-1"],
          "--margin"),
    _case("proj-proj-file-folder", ["projection", "--model_folder", "run", "--max_epoch", "2",
                                    "--proj_file", "adir"], "is a folder"),
    _case("proj-proj-file-under-file", ["projection", "--model_folder", "run", "--max_epoch", "2",
                                        "--proj_file", "afile/p.h5"], "is a file"),
    _case("proj-pca-file-folder", ["projection", "--model_folder", "run", "--max_epoch", "2",
                                   "--pca_file", "adir"], "is a folder"),
    _case("proj-dir-file-text", ["projection", "--model_folder", "run", "--max_epoch", "2",
                                 "--dir_file", "afile"], "cannot read"),
    _case("proj-dir-file-folder", ["projection", "--model_folder", "run", "--max_epoch", "2",
                                   "--dir_file", "adir"], "is a folder"),
    _case("proj-dir-type", ["projection", "--model_folder", "run", "--max_epoch", "2", "--dir_type", "grads"],
          "unknown --dir_type"),
    _case("proj-model-colon", ["projection", "--model", ":", "--model_folder", "run", "--max_epoch", "2"],
          "is not package.module:name"),
    # --- plot_trajectory
    _case("traj-out-dir-file", ["plot_trajectory", "--model_folder", "run", "--max_epoch", "2",
                                "--out_dir", "afile"], "is a file", ["afile"]),
    _case("traj-proj-missing", ["plot_trajectory", "--proj_file", "nope.h5"], "projection file not found"),
    _case("traj-damaged", ["plot_trajectory", "--model_files", "run/model_0.t7", "run/model_1.t7",
                           CK + "text.t7"], "damaged"),
    _case("traj-margin-nan", ["plot_trajectory", "--model_folder", "run", "--max_epoch", "2",
                              "--margin", "nan"], "--margin"),
    # --- demo output paths (checked before the minutes of work)
    _case("demo-out-file", ["demo", "--out", "afile", "--quick"], "is a file", ["afile"]),
    _case("demo-out-under-file", ["demo", "--out", "afile/demo", "--quick"], "is a file"),
    _case("demo-doc-images-file", ["demo", "--out", "adir/demo", "--doc_images", "afile", "--quick"],
          "is a file"),
]


def _main(script):
    import importlib
    if script == "train":
        return importlib.import_module("cifar10.main").main
    return importlib.import_module(script).main


@pytest.mark.parametrize("argv,needle,keep", CASES)
def test_bad_input(ws, monkeypatch, argv, needle, keep):
    import errors
    monkeypatch.chdir(ws)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for f in keep:
        assert os.path.exists(os.path.join(ws, f)), f
    before = snapshot(ws)
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), \
            pytest.raises(SystemExit) as e:
        errors.run_main(_main(argv[0]), argv[1:])
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    errs = [line for line in lines if line.startswith("error:")]
    assert e.value.code == 2, err.getvalue()
    assert len(errs) == 1 and lines[-1] == errs[0], err.getvalue()
    assert "Traceback" not in err.getvalue()
    assert needle in errs[0], errs[0]
    assert snapshot(ws) == before  # nothing changed, nothing new (incl. out/s.h5, out/d.h5)
    assert not os.path.exists(os.path.join(ws, "evil_ran"))


def test_the_table_covers_the_classes():
    ids = [c.id for c in CASES]
    assert len(ids) >= 60 and len(set(ids)) == len(ids)
    for prefix, least in (("ckpt", 10), ("model", 12), ("mismatch", 2), ("data", 6), ("cifar", 3),
                          ("trainloader", 3), ("loss", 5), ("train", 15), ("proj", 12), ("traj", 3),
                          ("demo", 3)):
        assert sum(i.split("-")[0] == prefix for i in ids) >= least, prefix


# --- a few end to end, as real subprocesses
@pytest.mark.parametrize("argv,needle", [
    (["plot_surface.py", "--model_file", "ck/flipped.t7"] + GRID, "damaged"),
    (["demo.py", "--out", "afile"], "is a file"),
])
def test_bad_input_subprocess(ws, argv, needle):
    before = snapshot(ws)
    p = run_script([os.path.join(REPO, argv[0])] + argv[1:], cwd=ws, timeout=120)
    assert p.returncode == 2
    assert needle in assert_one_line_error(p)
    assert len([line for line in p.stderr.splitlines() if line.startswith("error:")]) == 1
    assert snapshot(ws) == before
