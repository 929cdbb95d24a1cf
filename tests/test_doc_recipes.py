"""Every ```bash and ```python block of README.md and doc/*.md runs as written.

Each document's blocks run in its order, in one shell, in a fresh copy of the repository
(``git ls-files``), so a later block uses the files and shell variables of the earlier
ones, as a reader following the page would. ``python``/``python3`` is this interpreter
(first on the PATH). A python block whose first line is ``# NAME.py`` is a file the text
asks you to write: it is written, not run.

Nothing is retyped: the blocks are read from the documents and changed only by the rules
listed here, each with its reason -- RULES for every block, and per block in PLAN (grids,
epochs and sample counts shrunk for time; what cannot run on a CPU-only machine without
a cluster). A block that cannot run here at all is skipped in PLAN with the reason. A
block that PLAN does not list (a new one, or one whose first line changed) fails
``test_every_doc_block_is_listed``: docs cannot drift from what runs.
"""
import glob
import os
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest

from conftest import REPO, copy_repo, fenced_blocks, write_cifar_batches

# Applied to every block: (pattern, replacement, why)
RULES = [
    (r"\bmpirun -n 4\b", "mpiexec -n 2", "two MPI ranks on this 2-core machine"),
    (r" --cuda\b", "", "no GPU here"),
    (r"(--[xy]=-?[\d.]+:-?[\d.]+):\d+", r"\1:3", "grids of 3 points per axis (time)"),
]


@dataclass
class Block:
    starts: str            # the block's first line starts with this
    skip: str = ""         # why it cannot run here (not run)
    subs: tuple = ()       # (pattern, replacement, why), before RULES
    twice: bool = False    # run it a second time: the rerun must work too (resume or reuse)


QUICK_START = "cifar10/trained_nets/digits_cnn_sgd_lr=0.1_bs=32_wd=0.0005_save_epoch=20/model_20.t7"
TRAJECTORY_END = "cifar10/trained_nets/digits_cnn_sgd_lr=0.1_bs=32_wd=0.0005_save_epoch=1/model_20.t7"
FEW_SAMPLES = (r"(python3? (?:hessian_spectrum|layer_curvature|hessian_directions|sharpness|mode_connectivity"
               r"|plot_hessian_eigen)\.py)", r"\1 --max_samples 200", "200 training images for the Hessian "
               "and curve tools (time)")
FEW_SHARPNESS = (r"(python3? sharpness\.py)", r"\1 --n_dirs 2 --ascent_steps 1 --trace_samples 4",
                 "2 random directions, 1 ascent step, 4 trace vectors (time)")
SHORT_CURVE = (r"(python3? mode_connectivity\.py)", r"\1 --epochs 2 --points 3", "2 curve epochs, 3 points (time)")
CURVATURE = (FEW_SAMPLES,
             (r"(python3? hessian_spectrum\.py)", r"\1 --lanczos_steps 20", "20 Lanczos steps, not 80 (time)"))

PLAN = {
    "README.md": [
        Block("# 1. install, then run the demo",
              skip="installs the requirements and runs the whole demo (minutes); tests/test_demo.py runs demo.py"),
        Block("# 2. install the test dependencies", skip="runs the whole test suite, this test included"),
        Block("python3 cifar10/main.py --model digits_cnn --epochs 20"),
        Block("mpirun -n 4 python plot_surface.py --mpi --cuda --model vgg9 --x=-0.5:1.5:401",
              skip="the original's recipes: tests/test_original_recipes.py runs them with CIFAR-10 batches and "
                   "checkpoints (the released ResNet-56) at their paths"),
        Block("mpirun -n 4 python plot_surface.py --mpi --cuda --model vgg9 --x=-1:1:51",
              skip="the original's recipes (tests/test_original_recipes.py)"),
        Block("mpirun -n 4 python plot_surface.py --mpi --cuda --model resnet56",
              skip="the original's recipes (tests/test_original_recipes.py)"),
        Block("import torch", subs=(
            (r"x=\(-1, 1, 11\), y=\(-1, 1, 11\)", "x=(-1, 1, 3), y=(-1, 1, 3)", "a 3x3 grid (time)"),
            (r"\[5, 5\]", "[1, 1]", "the centre of the 3x3 grid"))),
        Block("pip uninstall -y mpich mpi4py", skip="replaces the MPI installation by a cluster's (module system)"),
        Block("python cifar10/main.py --dataset digits --model digits_cnn --epochs 20 --batch_size 32 --lr 0.1 "
              "--save_epoch 1"),
        Block("mpirun -n 4 python plot_hessian_eigen.py", subs=(
            (r"mpirun -n 4 python plot_hessian_eigen\.py [^\n]*\\\n[^\n]*\n", "",
             "the ResNet-56 map needs CIFAR-10 and its checkpoint (hours on a CPU); the digits line runs"),
            (r"\bM\.t7\b", QUICK_START, "M.t7: the quick start's checkpoint"),
            FEW_SAMPLES)),
        Block("python cifar10/main.py --model digits_cnn --epochs 3 --save_epoch 3", subs=CURVATURE),
        Block("# the landscape along the two sharpest directions", subs=(
            (r"\bM\.t7\b", QUICK_START, "M.t7: the quick start's checkpoint"),
            (r"\bA\.t7\b", QUICK_START, "A.t7: the quick start's checkpoint"),
            (r"\bB\.t7\b", TRAJECTORY_END, "B.t7: the trajectory recipe's last checkpoint"),
            FEW_SAMPLES, FEW_SHARPNESS)),
        Block("for s in 1 2; do python cifar10/main.py --model digits_cnn", subs=(FEW_SAMPLES, SHORT_CURVE)),
        Block("python plot_surface.py --model digits_cnn --model_file $A --model_file2 $B --model_file3"),
        Block("for s in 1 2; do python cifar10/main.py --model cifar10.models.digits:mlp_w512"),
        Block("python cifar10/main.py --dataset digits --model digits_cnn --epochs 20 --batch_size 32 --lr 0.1\n",
              subs=((r"(--model resnet56 --cuda)", r"\1 --epochs 1 --max_samples 20",
                     "300 ResNet-56 epochs on CIFAR-10 are a GPU job: 1 epoch on 20 images"),)),
        Block("# mywork.py"),
        Block("python cifar10/main.py --model mywork:model", twice=True),
    ],
    "doc/cluster.md": [
        Block("sbatch script/surface_2d.sbatch",
              skip="needs a SLURM cluster; tests/test_slurm.py runs the batch scripts on a one-node cluster"),
        Block("pip uninstall -y mpich mpi4py", skip="replaces the MPI installation by a cluster's (module system)"),
    ],
    "doc/curvature.md": [
        Block("# a checkpoint: digits_cnn, 3 epochs", subs=CURVATURE),
    ],
    "doc/mode_connectivity.md": [
        Block("for s in 1 2; do   # two networks", subs=(FEW_SAMPLES, SHORT_CURVE)),
        Block("python plot_surface.py --model digits_cnn --model_file $A --model_file2 $B --model_file3"),
        Block("import torch\nimport curves"),
        Block("OMP_NUM_THREADS=1 python mode_connectivity.py", subs=(FEW_SAMPLES, SHORT_CURVE), twice=True),
    ],
    "doc/training.md": [
        Block("python cifar10/main.py --dataset digits --model digits_cnn --epochs 20"),
        Block("python plot_surface.py --dataset digits --model digits_cnn --x=-1:1:51"),
        Block("python cifar10/main.py --dataset cifar10 --datapath cifar10/data --model resnet56 --cuda", subs=(
            (r"(--model (?:resnet56|vgg9)[^\n]*?)( --cuda)", r"\1 --epochs 1 --max_samples 20\2",
             "300 epochs on CIFAR-10 are a GPU job: 1 epoch on 20 images"),)),
    ],
    "doc/sharpness.md": [
        Block("# two networks (seconds each)", subs=(FEW_SAMPLES, FEW_SHARPNESS)),
    ],
}


def documents():
    return ["README.md"] + sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "doc", "*.md")))


def doc_blocks(doc):
    with open(os.path.join(REPO, doc)) as f:
        return fenced_blocks(f.read())


def test_every_doc_block_is_listed():
    """Each document's blocks are exactly those of PLAN, in order (first lines match)."""
    for doc in documents():
        blocks, plan = doc_blocks(doc), PLAN.get(doc, [])
        firsts = [body.lstrip()[:100] for _, body in blocks]
        assert len(blocks) == len(plan), (f"{doc} has {len(blocks)} ```bash/```python blocks, PLAN lists "
                                          f"{len(plan)}: list every block in tests/test_doc_recipes.py", firsts)
        for (_, body), spec in zip(blocks, plan):
            assert body.lstrip().startswith(spec.starts), (doc, spec.starts, body[:200])
    assert set(PLAN) <= set(documents()), set(PLAN) - set(documents())


def test_rules_apply_where_listed():
    """Every per-block substitution changes its block (a stale rule fails)."""
    for doc, plan in PLAN.items():
        for (_, body), spec in zip(doc_blocks(doc), plan):
            for pattern, _, why in spec.subs:
                assert re.search(pattern, body), (doc, spec.starts, why)


def script_of(doc):
    """The document's runnable blocks as one bash script (rules applied, listed blocks skipped)."""
    lines = ["set -euo pipefail"]
    for n, ((lang, body), spec) in enumerate(zip(doc_blocks(doc), PLAN[doc]), 1):
        if spec.skip:
            continue
        for pattern, repl, _ in list(spec.subs) + RULES:
            body = re.sub(pattern, repl, body)
        lines.append(f"echo '### {doc} block {n}' >&2")
        if lang == "python":
            m = re.match(r"# (\w+\.py)\n", body)
            lines += [f"cat > {m.group(1)} <<'END_OF_BLOCK'" if m else "python - <<'END_OF_BLOCK'",
                      body.rstrip("\n"), "END_OF_BLOCK"]
        else:
            lines += [body.rstrip("\n")] * (2 if spec.twice else 1)
    return "\n".join(lines) + "\n"


@pytest.mark.slow
@pytest.mark.parametrize("doc", [d for d, plan in PLAN.items() if any(not b.skip for b in plan)])
def test_doc_recipes_run(doc, tmp_path):
    repo = str(tmp_path / "repo")
    copy_repo(repo)
    # as a user puts them: CIFAR-10 python batches (random images) where the docs say
    write_cifar_batches(os.path.join(repo, "cifar10", "data"), n_train=40, n_test=10)
    shims = tmp_path / "bin"
    shims.mkdir()
    for name in ("python", "python3"):
        os.symlink(sys.executable, shims / name)
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONUNBUFFERED="1",
               PATH=f"{shims}{os.pathsep}{os.environ.get('PATH', '')}")
    script = script_of(doc)
    p = subprocess.run(["bash", "-c", script], cwd=repo, env=env, capture_output=True, text=True, timeout=1800)
    tail = lambda s: "\n".join(s.splitlines()[-40:])
    assert p.returncode == 0, f"{doc}: status {p.returncode}\n{script}\n--- stdout\n{tail(p.stdout)}\n" \
                              f"--- stderr\n{tail(p.stderr)}"
    assert "Traceback" not in p.stderr, tail(p.stderr)
    made = [os.path.relpath(os.path.join(d, f), repo) for d, dirs, files in os.walk(repo) for f in dirs + files]
    assert not [f for f in made if ":" in f], [f for f in made if ":" in f]  # pkg.mod:fn names sanitized
    if doc == "README.md":
        # the own-model recipe's rerun resumed (the data are the same at every call)
        assert p.stdout.count("nothing to do: runs/mine/mywork_model_") == 1, tail(p.stdout)


def test_demo_numbers_agree_across_the_docs():
    """The sharpness ratios quoted in README.md and doc/demo.md are those of the demo's table
    in doc/sharpness.md (one run, one set of numbers)."""
    def read(path):
        with open(os.path.join(REPO, path)) as f:
            return " ".join(f.read().split())
    table = read("doc/sharpness.md")
    rows = {k: re.search(r"\| " + re.escape(k) + r" \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) ±", table).groups()
            for k in ("small batch (bs=16)", "large batch (bs=1024)")}
    small, large = ([float(v) for v in rows[k]] for k in rows)
    lam, trace = large[1] / small[1], large[2] / small[2]
    readme = re.search(r"has (\d+)x the λmax, (\d+)x the trace", read("README.md")).groups()
    assert [int(v) for v in readme] == [round(lam), round(trace)], (readme, lam, trace)
    demo = re.search(r"ratios \(λmax ([\d.]+)x, trace ([\d.]+)x", read("doc/demo.md")).groups()
    assert abs(float(demo[0]) - lam) < 0.1 and abs(float(demo[1]) - trace) < 0.1, (demo, lam, trace)
    assert f"λmax {round(lam)}x, trace {round(trace)}x" in table
