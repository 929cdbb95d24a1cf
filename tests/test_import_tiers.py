"""The import tiers of the project, read from the source with ``ast`` (nothing is imported).

Entry points are on top: the commands (files with a top-level ``if __name__ ==
"__main__"``), which no module imports, and the Python API; below them the runtime (the
shared run cycle, MPI, flags), then the domain modules (models, data, losses, directions,
the Hessian, file formats, figures), then the base (errors, files, the result store). A
module may import only modules of its own tier or lower. Every module of the project must
be in one tier, so a new module has to say where it sits.
"""
import ast

import pytest

from conftest import is_command, module_files

COMMANDS = {"plot_surface", "plot_1D", "plot_2D", "h52vtp", "plot_hessian_eigen", "hessian_spectrum",
            "layer_curvature", "hessian_directions", "sharpness", "mode_connectivity", "projection",
            "plot_trajectory", "demo", "cifar10.main", "align", "train_lm"}
TIERS = [  # top to bottom (doc/architecture.md): a module may import its own tier and the tiers below it
    ("entry point", COMMANDS | {"landscape"}),  # the commands and the Python API
    ("runtime", {"grid", "scheduler", "flags", "runner", "spec", "mpi4pytorch"}),
    ("domain", {"evaluation", "net_plotter", "hess_vec_prod", "evaluation_options", "direction_options",
                "hessian_options", "hessian", "model_loader", "dataloader", "lm", "lm_train",
                "surface", "inference", "plot_common", "plot_curves", "plot_html", "plot_maps",
                "curves", "tables", "alignment", "merging",
                "cifar10", "cifar10.models", "cifar10.models.densenet",
                "cifar10.models.digits", "cifar10.models.resnet", "cifar10.models.vgg"}),
    ("base", {"errors", "fileio", "store", "plugins"}),
]
# Known exceptions, each being removed in round 3 by the change named (the lead drops them at merge).
ALLOWED = {
    ("demo", "cifar10.main"),  # being removed in round 3: the training folder name out of cifar10/main.py
    ("plot_trajectory", "plot_2D"), ("plot_trajectory", "projection"),  # being removed in round 3: likewise
}
def local_imports(name: str, path: str, modules: set[str]) -> set[str]:
    """The project modules that ``name`` imports anywhere in its file (also inside functions)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(p for p in parts + [base] if p)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


FILES = module_files()
RANK = {m: i for i, (_, members) in enumerate(TIERS) for m in members}


def test_every_module_is_in_a_tier_and_the_commands_are_the_scripts():
    missing = sorted(m for m in FILES if m not in RANK)
    assert not missing, f"put these modules in a tier of tests/test_import_tiers.py: {missing}"
    commands = {m for m, p in FILES.items() if is_command(p)}
    assert commands == COMMANDS & set(FILES), "the command list must be the files with a __main__ block"


@pytest.mark.parametrize("name", sorted(FILES))
def test_imports_go_down_the_tiers(name):
    imports = local_imports(name, FILES[name], set(FILES))
    up = sorted(t for t in imports if (name, t) not in ALLOWED and
                (t in COMMANDS or RANK.get(t, -1) < RANK.get(name, len(TIERS))))
    assert not up, f"{name} ({TIERS[RANK[name]][0]}) imports {up} from a higher tier or a command"


def test_the_allowlist_holds_only_imports_that_exist():
    """An exception that is no longer needed is dropped from ALLOWED."""
    stale = sorted((a, b) for a, b in ALLOWED
                   if a not in FILES or b not in local_imports(a, FILES[a], set(FILES)))
    assert not stale, f"drop from ALLOWED: {stale}"
