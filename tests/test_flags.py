"""The command line of every script: composed flag groups, one parser class, help before torch.

- ``--help`` of every command returns without importing torch (the flags are parsed and
  checked first), checked in a fresh interpreter;
- every flag shows its default once, and each description is the whole first paragraph
  of the script's docstring (not cut mid-sentence);
- a flag that a script does not use does not exist there: giving it is one ``error:``
  line, exit 2, nothing written (the table below), also under ``mpiexec`` without
  ``--mpi``, where it is printed once.
"""
import importlib
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, assert_one_error_line, run_main_error, run_mpi, run_script, snapshot

COMMANDS = ["plot_surface.py", "plot_hessian_eigen.py", "hessian_spectrum.py", "layer_curvature.py",
            "hessian_directions.py", "sharpness.py", "mode_connectivity.py", "projection.py",
            "plot_trajectory.py", "plot_1D.py", "plot_2D.py", "h52vtp.py", "demo.py"]
COMMANDS += [s for s in ("align.py",) if os.path.exists(os.path.join(REPO, s))]

HELP_PROBE = """
import json, runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
    code = 0
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "torch": "torch" in sys.modules}))
"""


@pytest.mark.parametrize("script", COMMANDS)
def test_help_returns_before_torch_is_imported(script):
    p = subprocess.run([sys.executable, "-c", HELP_PROBE, script], cwd=REPO, capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "torch": False}, (script, p.stdout[-500:])


def _parser(script):
    module = importlib.import_module(script[:-3].replace("/", "."))
    return module.build_parser() if hasattr(module, "build_parser") else module.parser


def _option_blocks(help_text):
    """{first option string: its help text} from argparse's --help output."""
    blocks, name = {}, None
    for line in help_text.splitlines():
        m = re.match(r"^  (-[-\w]+)", line)
        if m:
            name = m.group(1)
            blocks[name] = line
        elif name and line.startswith("    "):
            blocks[name] += " " + line.strip()
        else:
            name = None
    return {k: re.sub(r"\s+", " ", v) for k, v in blocks.items() if k not in ("-h",)}


@pytest.mark.parametrize("script", COMMANDS)
def test_help_shows_every_default_once(script):
    blocks = _option_blocks(_parser(script).format_help())
    assert len(blocks) >= 4
    for flag, text in blocks.items():
        assert text.lower().count("default") >= 1, (flag, text)
        assert text.count("(default") <= 1, (flag, text)


def test_help_of_plot_surface_says_datapath_and_surf_file_defaults_once():
    blocks = _option_blocks(_parser("plot_surface.py").format_help())
    for flag in ("--datapath", "--surf_file"):
        assert blocks[flag].count("default") == 1, blocks[flag]


@pytest.mark.parametrize("script", ["demo.py", "sharpness.py", "projection.py", "plot_trajectory.py",
                                    "hessian_directions.py", "mode_connectivity.py", "plot_hessian_eigen.py"])
def test_description_is_the_whole_first_paragraph(script):
    """The description in --help is the first paragraph of the docstring, never cut mid-sentence."""
    module = importlib.import_module(script[:-3])
    first = " ".join(module.__doc__.strip().split("\n\n")[0].split())
    shown = " ".join(_parser(script).description.split())
    assert shown == first and shown.endswith((".", ":", ")")), shown


@pytest.mark.parametrize("script", COMMANDS + ["cifar10/main.py"])
def test_every_command_uses_the_one_parser_class(script):
    import flags
    assert isinstance(_parser(script), flags.ArgumentParser)


def test_plot_surface_keeps_every_flag_of_the_original():
    """The original plot_surface.py's flags (tomgoldstein/loss-landscape), all still there."""
    original = ("--mpi --cuda --threads --ngpu --batch_size --dataset --datapath --raw_data --data_split "
                "--split_idx --trainloader --testloader --model --model_folder --model_file --model_file2 "
                "--model_file3 --loss_name --dir_file --dir_type --x --y --xnorm --ynorm --xignore --yignore "
                "--same_dir --idx --surf_file --proj_file --loss_max --vmax --vmin --vlevel --show --plot").split()
    shown = set(re.findall(r"--\w+", _parser("plot_surface.py").format_help()))
    assert not set(original) - shown


# --------------------------------------------------------- flags a script does not use
UNUSED = [  # (script, flags, what the line must name)
    ("hessian_spectrum.py", ["--engine", "eager"], "--engine"),
    ("hessian_spectrum.py", ["--points_per_pass", "2"], "--points_per_pass"),
    ("hessian_spectrum.py", ["--model_file2", "b.t7"], "--model_file2"),
    ("hessian_spectrum.py", ["--x=-1:1:3"], "--x"),
    ("hessian_spectrum.py", ["--precision", "bf16"], "--precision"),
    ("hessian_spectrum.py", ["--test"], "--test"),
    ("hessian_spectrum.py", ["--xnorm", "layer"], "--xnorm"),
    ("hessian_spectrum.py", ["--dir_file", "d.h5"], "--at"),
    ("layer_curvature.py", ["--engine", "fused"], "--engine"),
    ("layer_curvature.py", ["--points_per_pass", "auto"], "--points_per_pass"),
    ("layer_curvature.py", ["--y=-1:1:3"], "--y"),
    ("layer_curvature.py", ["--model_file3", "c.t7"], "--model_file3"),
    ("layer_curvature.py", ["--surf_file", "s.h5"], "--surf_file"),
    ("layer_curvature.py", ["--dir_file", "d.h5"], "--at"),
    ("plot_hessian_eigen.py", ["--engine", "eager"], "--engine"),
    ("plot_hessian_eigen.py", ["--points_per_pass", "4"], "--points_per_pass"),
    ("plot_hessian_eigen.py", ["--precision", "tf32"], "--precision"),
    ("plot_hessian_eigen.py", ["--trace", "--dir_file", "d.h5"], "--at"),
    ("hessian_directions.py", ["--engine", "eager"], "--engine"),
    ("hessian_directions.py", ["--y=-1:1:3"], "--y"),
    ("hessian_directions.py", ["--model_file2", "b.t7"], "--model_file2"),
    ("hessian_directions.py", ["--xignore", ""], "--xignore"),
    ("hessian_directions.py", ["--save_every", "5"], "--save_every"),
    ("sharpness.py", ["--engine", "eager"], "--engine"),
    ("sharpness.py", ["--points_per_pass", "2"], "--points_per_pass"),
    ("sharpness.py", ["--y=-1:1:3"], "--y"),
    ("sharpness.py", ["--model_file2", "b.t7"], "--model_file2"),
    ("sharpness.py", ["--dir_file", "d.h5"], "--dir_file"),
    ("sharpness.py", ["--ngpu", "2"], "--ngpu"),
    ("mode_connectivity.py", ["--engine", "eager"], "--engine"),
    ("mode_connectivity.py", ["--points_per_pass", "2"], "--points_per_pass"),
    ("mode_connectivity.py", ["--y=-1:1:3"], "--y"),
    ("mode_connectivity.py", ["--dir_file", "d.h5"], "--dir_file"),
    ("mode_connectivity.py", ["--model_file3", "c.t7"], "--model_file3"),
    ("mode_connectivity.py", ["--vmin", "0"], "--vmin"),
    ("projection.py", ["--engine", "eager"], "--engine"),
    ("projection.py", ["--x=-1:1:3"], "--x"),
    ("plot_trajectory.py", ["--y=-1:1:3"], "--y"),
    ("plot_1D.py", ["--engine", "eager"], "--engine"),
    ("plot_2D.py", ["--model_file2", "b.t7"], "--model_file2"),
    ("h52vtp.py", ["--surf_file", "d.h5", "--x=-1:1:3"], "--x"),
    ("demo.py", ["--engine", "eager"], "--engine"),
    ("plot_surface.py", ["--xnor", "layer"], "--xnor"),  # no abbreviations: --xnor is not --xnorm
    ("plot_surface.py", ["--model_fil", "a.t7"], "--model_fil"),
]


@pytest.mark.parametrize("script,argv,name", UNUSED, ids=[f"{s[:-3]}:{' '.join(a)}" for s, a, _ in UNUSED])
def test_a_flag_the_script_does_not_use_is_refused(script, argv, name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.h5").write_bytes(b"not used")
    before = snapshot(str(tmp_path))
    main = importlib.import_module(script[:-3]).main
    code, err = run_main_error(main, argv, capsys)
    assert code == 2
    line = assert_one_error_line(err, only=True)
    assert name in line and (script in line or name == "--at"), line
    assert snapshot(str(tmp_path)) == before


def test_the_unused_flag_table_covers_every_computing_script():
    scripts = {s for s, _, _ in UNUSED}
    assert len(UNUSED) >= 40
    assert {"hessian_spectrum.py", "layer_curvature.py", "plot_hessian_eigen.py", "hessian_directions.py",
            "sharpness.py", "mode_connectivity.py", "projection.py", "plot_trajectory.py"} <= scripts


@pytest.mark.parametrize("rank,lines", [("0", 1), ("1", 0)])
def test_a_flag_error_in_a_launched_process_is_printed_by_rank_0_only(rank, lines):
    """As mpiexec starts them without --mpi: every process finds the same flag error; rank 0 says it."""
    p = run_script(["sharpness.py", "--engine", "eager"], env={"PMI_RANK": rank, "PMI_SIZE": "2"}, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert len([line for line in p.stderr.splitlines() if line.startswith("error:")]) == lines, p.stderr


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["hessian_directions.py", "--engine", "eager"],
                                  ["plot_surface.py", "--x=-1:1:1"]])
def test_a_flag_error_under_mpiexec_without_mpi_prints_once(argv, tmp_path):
    before = snapshot(str(tmp_path))
    p = run_mpi([os.path.join(REPO, argv[0])] + argv[1:], n=2, cwd=str(tmp_path), timeout=120)
    assert p.returncode != 0
    assert_one_error_line(p.stderr)
    assert snapshot(str(tmp_path)) == before


# ------------------------------------------------- choices owned by the libraries
@pytest.mark.parametrize("check,value,library_says", [
    ("evaluation_options.check_precision", "fp16", "precision must be fp32, tf32 or bf16"),
    ("evaluation_options.check_engine", "jit", "engine must be auto, eager, fused or compiled"),
    ("direction_options.check_norm", "l2", "unknown norm 'l2'"),
    ("direction_options.check_ignore", "bn", "unknown ignore 'bn'"),
    ("direction_options.check_dir_type", "grads", "unknown dir_type 'grads'"),
])
def test_library_errors_name_the_parameter_and_the_command_line_adds_the_dashes(check, value, library_says):
    from errors import UserError
    module, name = check.split(".")
    fn = getattr(importlib.import_module(module), name)
    with pytest.raises(UserError) as e:
        fn(value)
    assert str(e.value).startswith(library_says) or library_says in str(e.value), str(e.value)
    parameter = name[len("check_"):]
    with pytest.raises(UserError) as e:
        fn(value, f"--{parameter}")
    assert f"--{parameter}" in str(e.value)


def test_the_libraries_and_the_flags_read_the_same_choices():
    import direction_options
    import evaluation
    import evaluation_options
    import hess_vec_prod
    import hessian_options
    import net_plotter
    assert evaluation.PRECISIONS is evaluation_options.PRECISIONS and evaluation.ENGINES is evaluation_options.ENGINES
    assert net_plotter.NORMS is direction_options.NORMS
    assert hess_vec_prod.DEFAULT_TOL == hessian_options.DEFAULT_TOL


def test_the_evaluator_refuses_an_unknown_precision_naming_the_parameter():
    import torch

    from errors import UserError
    from evaluation import Evaluator, get_loss_fn
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    with pytest.raises(UserError, match="^precision must be fp32, tf32 or bf16"):
        Evaluator(net, torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), get_loss_fn("crossentropy"), 2,
                  torch.device("cpu"), precision="fp16")


def test_flags_and_the_choice_modules_load_without_torch():
    code = ("import sys, flags, evaluation_options, direction_options, hessian_options; "
            "print('torch' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "False", p.stderr
