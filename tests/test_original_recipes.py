"""The README's "original's recipes" run as written: the command lines are taken from the
README text (not retyped), with ``mpirun -n 4`` -> ``mpiexec -n 2``, ``--cuda`` dropped and
the grids shrunk, in a copy of the repository holding CIFAR-10 python batches and
original-format checkpoints at the README's paths. No ``--dataset`` is given: the data set
follows the model (CIFAR zoo -> CIFAR-10)."""
import glob
import os
import re
import shlex
import shutil
import subprocess

import numpy as np
import pytest
import torch

from conftest import COMPAT, REPO, adapt_command, copy_repo, fenced_blocks, shell_commands, write_cifar_batches

SECTION = "## The original's recipes"
RELEASED = os.path.join(COMPAT, "resnet56_sgd_lr=0.1_bs=128_wd=0.0005_model_300.t7")


def readme_commands(readme_text):
    """The command lines of the ```bash blocks of the recipes section."""
    start = readme_text.index(SECTION)
    end = readme_text.find("\n## ", start + len(SECTION))
    section = readme_text[start:end if end > 0 else None]
    return [c for lang, block in fenced_blocks(section, ("bash",)) for c in shell_commands(block)]


def _checkpoint(path, model, seed):
    from model_loader import build_model
    torch.manual_seed(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"acc": 10.0, "epoch": 300, "state_dict": build_model(model).state_dict()}, path)


def test_readme_recipes_parse_into_three_surface_runs():
    with open(os.path.join(REPO, "README.md")) as f:
        commands = readme_commands(f.read())
    surface = [c for c in commands if "plot_surface.py" in c]
    assert len(surface) == 3, commands
    assert all(c.startswith("mpirun -n 4 python plot_surface.py --mpi --cuda") for c in surface)
    assert any("plot_2D.py" in c for c in commands) and any("h52vtp.py" in c for c in commands)


def _readme():
    with open(os.path.join(REPO, "README.md")) as f:
        return f.read()


def _folder_flags(folder):
    """'vgg9_sgd_lr=0.1_bs=128_wd=0.0_save_epoch=1' -> cifar10/main.py flags."""
    model, rest = re.match(r"^(.*?)_(sgd|adam)_", folder).group(1), folder.split("_sgd_", 1)[-1]
    flags = ["--model", model]
    names = {"lr": "--lr", "bs": "--batch_size", "wd": "--weight_decay", "mom": "--momentum",
             "save_epoch": "--save_epoch"}
    for key, value in re.findall(r"(save_epoch|lr|bs|wd|mom)=([^_]+)", rest):
        flags += [names[key], value]
    return flags


def test_readme_checkpoint_folders_are_what_training_writes():
    """The trained_nets folders of the recipes are the names cifar10/main.py gives the
    runs with those settings (no _mom=0.9_ or _save_epoch=10 for the defaults)."""
    from cifar10.main import build_parser, name_save_folder
    folders = {p.split("/")[2] for c in readme_commands(_readme()) for p in shlex.split(c)
               if p.startswith("cifar10/trained_nets/")}
    assert len(folders) == 3, folders
    for folder in folders:
        args = build_parser().parse_args(_folder_flags(folder))
        assert name_save_folder(args) == folder


def test_readme_trajectory_folder_is_what_its_training_line_writes():
    from cifar10.main import build_parser, name_save_folder
    text = _readme()
    train = re.search(r"^python cifar10/main\.py (.*)$", text, flags=re.M).group(1)
    folder = re.search(r'^F="cifar10/trained_nets/([^"]+)"$', text, flags=re.M).group(1)
    assert '--model_folder "$F"' in text
    assert name_save_folder(build_parser().parse_args(shlex.split(train))) == folder


@pytest.mark.slow
def test_readme_recipes_run_as_written(tmp_path):
    with open(os.path.join(REPO, "README.md")) as f:
        commands = readme_commands(f.read())
    repo = str(tmp_path / "repo")
    copy_repo(repo)
    write_cifar_batches(os.path.join(repo, "cifar10", "data"), n_train=40, n_test=10)
    # the checkpoints at the README's paths, in the original's format
    paths = sorted({p for c in commands for p in shlex.split(c) if p.endswith(".t7")})
    assert paths, commands
    for i, p in enumerate(paths):
        full = os.path.join(repo, p)
        if p.startswith("cifar10/trained_nets/resnet56_"):
            os.makedirs(os.path.dirname(full), exist_ok=True)
            shutil.copy(RELEASED, full)  # the original's released checkpoint
        else:
            _checkpoint(full, p.split("/")[2].split("_")[0], seed=i)
    env = {"OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    surf_2d = None
    for command in commands:
        argv = adapt_command(command)
        if "path_to_surf_file" in argv:
            assert surf_2d, "plot_2D/h52vtp lines come after the 2D surface"
            argv = [surf_2d if a == "path_to_surf_file" else a for a in argv]
        before = set(glob.glob(os.path.join(repo, "cifar10", "trained_nets", "**", "*.h5"),
                               recursive=True))
        script = next(a for a in argv if a.endswith(".py"))
        cmd = argv[:argv.index(script)] + [os.path.join(repo, script)] + argv[argv.index(script) + 1:]
        if "plot_surface.py" in script:
            cmd.append("--no_progress")
        e = dict(os.environ, PYTHONUNBUFFERED="1", **env)
        p = subprocess.run(cmd, cwd=repo, env=e, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, f"{command}\n->{cmd}\n{p.stdout}\n{p.stderr}"
        assert "Traceback" not in p.stderr
        if "plot_surface.py" in script:
            made = set(glob.glob(os.path.join(repo, "cifar10", "trained_nets", "**", "*.h5"),
                                 recursive=True)) - before
            surfs = [f for f in made if "].h5" in os.path.basename(f)]
            assert len(surfs) == 1, made
            _check_surface(surfs[0], two_d="--y=" in command)
            if "--y=" in command:
                surf_2d = os.path.relpath(surfs[0], repo)
    assert surf_2d
    folder = os.path.dirname(os.path.join(repo, surf_2d))
    outputs = os.listdir(folder)
    assert any(f.endswith(".vtp") for f in outputs), outputs
    assert any("contour" in f for f in outputs), outputs


def _check_surface(path, two_d):
    from surface import read_surface
    s = read_surface(path)
    assert s.complete
    assert s.settings["dataset"] == "cifar10" and s.settings["n_train"] == 40
    loss = np.asarray(s.get("train_loss"))
    assert loss.shape == ((3, 3) if two_d else (3,))
    assert np.isfinite(loss).all()
